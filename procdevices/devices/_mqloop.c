/* The steerable forwarding loop in C: procdevices.devices._mqloop.
 *
 * The same loop as monitored_queue_steerable's Python fallback (monitoredqueuedevice.py),
 * run with the GIL released: pyzmq's monitored_queue semantics (a prefix + message copy of
 * every message to the monitor, sent before the message; the first two frames swapped when
 * both sides are ROUTER; in and out may be one socket) and libzmq's steerable control
 * protocol (PAUSE, RESUME, TERMINATE, STATISTICS, anything else: one empty frame).
 *
 * With raw_capture it is libzmq's proxy instead (every other device, cloop.py): the monitor
 * gets a plain copy of every frame, as libzmq's capture socket does. One zmq_poll per batch
 * where libzmq's proxy makes two, over the sockets that can be readable only (a PUSH out is
 * not polled): 0.77-0.86x the loop thread's CPU per 64 B message of zmq_proxy without a
 * control socket, with one (scripts/bench/loop_cost.c, docs/performance.md).
 *
 * No libzmq header and no link to libzmq: pyzmq's wheels ship neither zmq.h nor a libzmq to
 * link against (they bundle their own copy). The few declarations needed are written out
 * below from libzmq's stable ABI, and bind() resolves the functions at run time from the
 * library pyzmq has already loaded (dlopen with RTLD_NOLOAD, then dlsym), so that the loop
 * drives pyzmq's sockets with the very libzmq instance that created them.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- libzmq's ABI (include/zmq.h; unchanged through the 4.x releases) ------------------ */

/* 64 opaque bytes, aligned like a pointer. */
typedef union {
    unsigned char _[64];
    void *p;
    uint64_t align;
} zmq_msg_t;

typedef struct {
    void *socket;
    int fd; /* SOCKET on Windows; this module is POSIX only */
    short events;
    short revents;
} zmq_pollitem_t;

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#define ZMQ_POLLIN 1

typedef struct {
    int (*msg_init)(zmq_msg_t *);
    int (*msg_close)(zmq_msg_t *);
    int (*msg_copy)(zmq_msg_t *, zmq_msg_t *);
    int (*msg_move)(zmq_msg_t *, zmq_msg_t *);
    int (*msg_send)(zmq_msg_t *, void *, int);
    int (*msg_recv)(zmq_msg_t *, void *, int);
    size_t (*msg_size)(const zmq_msg_t *);
    void *(*msg_data)(zmq_msg_t *);
    int (*msg_more)(const zmq_msg_t *);
    int (*send)(void *, const void *, size_t, int);
    int (*poll)(zmq_pollitem_t *, int, long);
    int (*errno_)(void);
    void (*version)(int *, int *, int *);
} zmq_api_t;

static zmq_api_t zmq;

static void *zmq_lib = NULL; /* the handle bind() holds, NULL until it succeeded */

/* ---- the loop ---------------------------------------------------------------------- */

/* Results of the helpers below: 0, an errno from libzmq (> 0), or RAISED: a signal handler
 * raised, the exception is set (in the thread state saved in loop->ts). */
#define RAISED (-1)
/* command(): the loop returns (TERMINATE was answered) */
#define TERMINATED (-2)

/* Python's signal handlers, in the main thread. A signal that comes while the loop waits in
 * a system call interrupts it (EINTR): the handlers run at once. One that comes while the loop
 * runs its own code only sets Python's flag; the loop looks at the flag (which takes the GIL)
 * at most this long after it last did, and before it waits for good: a busy loop runs
 * pending handlers within this time, an idle one never wakes for them. */
#define SIGNAL_CHECK_NS 50000000LL

typedef struct {
    void *in, *out, *mon, *ctrl;
    const char *prefix[2];
    size_t prefix_len[2];
    int swap_ids;
    int raw_capture; /* mon gets plain frame copies (libzmq's capture), no prefix */
    long batch;
    int check_signals; /* the loop runs in the main thread: Python's handlers run there */
    uint64_t *counters;
    PyThreadState *ts; /* saved while the GIL is released */
    long long last_check_ns;
    int ran; /* the loop ran its own code since it last looked for handlers */
    zmq_msg_t *frames; /* one message's frames, all initialised */
    size_t capacity;
    zmq_msg_t copy; /* the monitor's copy of a frame */
} loop_t;

static long long
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Run Python's signal handlers (they only run in the main thread). */
static int
check_signals(loop_t *L)
{
    int rc;
    PyEval_RestoreThread(L->ts);
    rc = PyErr_CheckSignals();
    L->ts = PyEval_SaveThread();
    L->last_check_ns = now_ns();
    L->ran = 0;
    return rc < 0 ? RAISED : 0;
}

/* libzmq's errno after a failed call; on EINTR the handlers run, and 0 means "retry". */
static int
failed(loop_t *L)
{
    int e = zmq.errno_();
    if (e != EINTR)
        return e;
    if (L->check_signals)
        return check_signals(L);
    return 0;
}

static int
recv_frame(loop_t *L, zmq_msg_t *msg, void *socket, int flags)
{
    int rc;
    while (zmq.msg_recv(msg, socket, flags) < 0)
        if ((rc = failed(L)) != 0)
            return rc;
    return 0;
}

static int
send_frame(loop_t *L, zmq_msg_t *msg, void *socket, int flags)
{
    int rc;
    while (zmq.msg_send(msg, socket, flags) < 0)
        if ((rc = failed(L)) != 0)
            return rc;
    return 0;
}

static int
send_bytes(loop_t *L, void *socket, const void *data, size_t size, int flags)
{
    int rc;
    while (zmq.send(socket, data, size, flags) < 0)
        if ((rc = failed(L)) != 0)
            return rc;
    return 0;
}

/* Room for at least n frames, every slot an initialised message. */
static int
reserve(loop_t *L, size_t n)
{
    size_t capacity = L->capacity, i;
    zmq_msg_t *frames;
    if (n <= capacity)
        return 0;
    while (capacity < n)
        capacity *= 2;
    frames = malloc(capacity * sizeof(zmq_msg_t));
    if (frames == NULL)
        return ENOMEM;
    for (i = 0; i < capacity; i++)
        zmq.msg_init(&frames[i]);
    /* libzmq's messages are moved with its own call, never with memcpy */
    for (i = 0; i < L->capacity; i++) {
        zmq.msg_move(&frames[i], &L->frames[i]);
        zmq.msg_close(&L->frames[i]);
    }
    free(L->frames);
    L->frames = frames;
    L->capacity = capacity;
    return 0;
}

/* Forward up to L->batch messages from source to target, each preceded by its copy to the
 * monitor; count them in counters[src_at..] and counters[dst_at..] as each one is sent. */
static int
relay(loop_t *L, void *source, void *target, int side, int src_at, int dst_at)
{
    long done;
    int rc;
    for (done = 0; done < L->batch; done++) {
        size_t n = 0, i, size = 0;
        /* A multipart message arrives whole: after its first frame, the others are here. */
        do {
            if ((rc = reserve(L, n + 1)) != 0)
                return rc;
            rc = recv_frame(L, &L->frames[n], source, ZMQ_DONTWAIT);
            if (rc == EAGAIN && n == 0)
                return 0;
            if (rc != 0)
                return rc;
            size += zmq.msg_size(&L->frames[n]);
        } while (zmq.msg_more(&L->frames[n++]));
        if (L->mon != NULL && L->raw_capture) {
            /* libzmq's capture: the frames as they are, no prefix, never swapped */
            for (i = 0; i < n; i++) {
                if (zmq.msg_copy(&L->copy, &L->frames[i]) < 0)
                    return zmq.errno_();
                if ((rc = send_frame(L, &L->copy, L->mon, i + 1 < n ? ZMQ_SNDMORE : 0)) != 0)
                    return rc;
            }
        }
        else if (L->mon != NULL) {
            /* The copy first: once a peer has the message, the monitor has its copy. */
            rc = send_bytes(L, L->mon, L->prefix[side], L->prefix_len[side], ZMQ_SNDMORE);
            if (rc != 0)
                return rc;
            for (i = 0; i < n; i++) {
                size_t k = (L->swap_ids && n > 1 && i < 2) ? 1 - i : i;
                if (zmq.msg_copy(&L->copy, &L->frames[k]) < 0)
                    return zmq.errno_();
                if ((rc = send_frame(L, &L->copy, L->mon, i + 1 < n ? ZMQ_SNDMORE : 0)) != 0)
                    return rc;
            }
        }
        for (i = 0; i < n; i++) {
            size_t k = (L->swap_ids && n > 1 && i < 2) ? 1 - i : i;
            if ((rc = send_frame(L, &L->frames[k], target, i + 1 < n ? ZMQ_SNDMORE : 0)) != 0)
                return rc;
        }
        L->counters[src_at] += n;
        L->counters[src_at + 1] += size;
        L->counters[dst_at] += n;
        L->counters[dst_at + 1] += size;
    }
    return 0;
}

/* Is msg the command `name`? */
static int
is_command(zmq_msg_t *msg, const char *name)
{
    size_t len = strlen(name);
    return zmq.msg_size(msg) == len && memcmp(zmq.msg_data(msg), name, len) == 0;
}

/* Read one command from the control socket and answer it as libzmq's steerable proxy does,
 * except that PAUSE pauses and RESUME resumes (libzmq 4.3.5 swaps them). A multi-frame
 * command is read whole and its last frame is the command. Sets *paused; sets *skip after
 * STATISTICS (the loop polls again before relaying, as the Python loop does). */
static int
command(loop_t *L, int *paused, int *skip)
{
    int rc, i;
    do {
        if ((rc = recv_frame(L, &L->frames[0], L->ctrl, 0)) != 0)
            return rc;
    } while (zmq.msg_more(&L->frames[0]));
    if (is_command(&L->frames[0], "TERMINATE")) {
        rc = send_bytes(L, L->ctrl, "", 0, 0);
        return rc != 0 ? rc : TERMINATED;
    }
    if (is_command(&L->frames[0], "STATISTICS")) {
        /* eight native-endian uint64 frames */
        for (i = 0; i < 8; i++) {
            rc = send_bytes(L, L->ctrl, &L->counters[i], sizeof(uint64_t), i < 7 ? ZMQ_SNDMORE : 0);
            if (rc != 0)
                return rc;
        }
        *skip = 1;
        return 0;
    }
    if (is_command(&L->frames[0], "PAUSE"))
        *paused = 1;
    else if (is_command(&L->frames[0], "RESUME"))
        *paused = 0;
    return send_bytes(L, L->ctrl, "", 0, 0);
}

/* Poll in, out and control (only control while paused), answer a command, relay a batch
 * from each readable side; until TERMINATE (TERMINATED), an error (its errno) or a signal
 * handler's exception (RAISED). */
static int
serve(loop_t *L, int poll_out)
{
    zmq_pollitem_t items[3];
    int n = 0, out_at = -1, ctrl_at = -1, paused = 0, rc;
    memset(items, 0, sizeof(items));
    items[n].socket = L->in;
    items[n++].events = ZMQ_POLLIN;
    if (L->out != L->in && poll_out) {
        out_at = n;
        items[n].socket = L->out;
        items[n++].events = ZMQ_POLLIN;
    }
    if (L->ctrl != NULL) {
        ctrl_at = n;
        items[n].socket = L->ctrl;
        items[n++].events = ZMQ_POLLIN;
    }
    for (;;) {
        int active = !paused, skip = 0;
        long timeout = -1;
        if (L->check_signals && L->ran) {
            /* A signal may have come while the loop ran its own code: not later than
             * SIGNAL_CHECK_NS after the last look, run the handlers it left pending. */
            long long since = now_ns() - L->last_check_ns;
            if (since >= SIGNAL_CHECK_NS) {
                if (check_signals(L) != 0)
                    return RAISED;
            }
            else
                timeout = (long)((SIGNAL_CHECK_NS - since + 999999) / 1000000);
        }
        /* paused: ctrl_at >= 0, as only a command pauses */
        while ((rc = zmq.poll(active ? items : &items[ctrl_at], active ? n : 1, timeout)) < 0)
            if ((rc = failed(L)) != 0)
                return rc;
        if (rc == 0) { /* the wait for the next look timed out */
            if (check_signals(L) != 0)
                return RAISED;
            continue;
        }
        if (L->check_signals) {
            if (timeout < 0) /* a signal during the wait would have interrupted it */
                L->last_check_ns = now_ns();
            L->ran = 1;
        }
        if (ctrl_at >= 0 && (items[ctrl_at].revents & ZMQ_POLLIN)) {
            if ((rc = command(L, &paused, &skip)) != 0)
                return rc;
            if (skip || paused)
                continue;
        }
        if (!active)
            continue; /* resumed: the sides were not polled */
        if (items[0].revents & ZMQ_POLLIN)
            if ((rc = relay(L, L->in, L->out, 0, 0, 6)) != 0)
                return rc;
        if (out_at >= 0 && (items[out_at].revents & ZMQ_POLLIN))
            if ((rc = relay(L, L->out, L->in, 1, 4, 2)) != 0)
                return rc;
    }
}

/* ---- the module -------------------------------------------------------------------- */

PyDoc_STRVAR(run_doc,
"run(in_handle, out_handle, mon_handle, ctrl_handle, in_prefix, out_prefix, swap_ids,\n"
"    batch, counters, check_signals, raw_capture=False, poll_out=True) -> int\n\n"
"Run the steerable monitored queue on libzmq socket handles (pyzmq's Socket.underlying;\n"
"0 for no monitor or no control socket) with the GIL released. counters: a writable\n"
"buffer of eight native uint64, added to as messages are relayed (frontend frames in,\n"
"bytes in, frames out, bytes out, then the backend). check_signals: run Python's signal\n"
"handlers when a call is interrupted, and within 50 ms of a signal that came while the\n"
"loop ran its own code (for the main thread). raw_capture: the monitor gets a plain copy\n"
"of every frame (libzmq's capture; the prefixes are not sent). poll_out: False when the\n"
"out socket can never be readable (PUSH, PUB): the loop then never polls it.\n"
"Returns 0 after TERMINATE, else the errno of the libzmq call that failed; raises what a\n"
"signal handler raised.");

static PyObject *
mqloop_run(PyObject *self, PyObject *args)
{
    unsigned long long in, out, mon, ctrl;
    const char *in_prefix, *out_prefix;
    Py_ssize_t in_len, out_len;
    int swap_ids, check, rc, raw_capture = 0, poll_out = 1;
    long batch;
    Py_buffer counters;
    loop_t L;
    size_t i;

    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKy#y#plw*p|pp:run", &in, &out, &mon, &ctrl, &in_prefix, &in_len,
                          &out_prefix, &out_len, &swap_ids, &batch, &counters, &check, &raw_capture, &poll_out))
        return NULL;
    if (zmq_lib == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not found libzmq");
        goto fail;
    }
    if (counters.len != 8 * sizeof(uint64_t) || (uintptr_t)counters.buf % sizeof(uint64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "counters: eight aligned native uint64 (64 bytes)");
        goto fail;
    }
    if (in == 0 || out == 0) {
        PyErr_SetString(PyExc_ValueError, "no in or out socket");
        goto fail;
    }
    if (batch < 1) {
        PyErr_SetString(PyExc_ValueError, "batch must be at least 1");
        goto fail;
    }
    memset(&L, 0, sizeof(L));
    L.in = (void *)(uintptr_t)in;
    L.out = (void *)(uintptr_t)out;
    L.mon = (void *)(uintptr_t)mon;
    L.ctrl = (void *)(uintptr_t)ctrl;
    L.prefix[0] = in_prefix;
    L.prefix_len[0] = (size_t)in_len;
    L.prefix[1] = out_prefix;
    L.prefix_len[1] = (size_t)out_len;
    L.swap_ids = swap_ids;
    L.raw_capture = raw_capture;
    L.batch = batch;
    L.check_signals = check;
    L.counters = (uint64_t *)counters.buf;
    L.capacity = 8;
    L.frames = malloc(L.capacity * sizeof(zmq_msg_t));
    if (L.frames == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (i = 0; i < L.capacity; i++)
        zmq.msg_init(&L.frames[i]);
    zmq.msg_init(&L.copy);

    L.ts = PyEval_SaveThread();
    L.last_check_ns = now_ns();
    L.ran = 1; /* a signal may have come since Python last looked */
    rc = serve(&L, poll_out);
    PyEval_RestoreThread(L.ts);

    /* A message cut short by an error or an exception is dropped here. */
    for (i = 0; i < L.capacity; i++)
        zmq.msg_close(&L.frames[i]);
    free(L.frames);
    zmq.msg_close(&L.copy);
    PyBuffer_Release(&counters);
    if (rc == RAISED)
        return NULL;
    return PyLong_FromLong(rc == TERMINATED ? 0 : rc);

fail:
    PyBuffer_Release(&counters);
    return NULL;
}

PyDoc_STRVAR(bind_doc,
"bind(path) -> (str, (major, minor, patch))\n\n"
"Resolve the loop's libzmq functions through the shared object at path, which must be\n"
"loaded already (RTLD_NOLOAD): pyzmq's backend extension (its libzmq is found among its\n"
"dependencies) or a libzmq itself. Returns the file that provides them and libzmq's\n"
"version. Binds once; a later call must resolve to the same library. OSError if path is not\n"
"loaded or lacks a function.");

#define RESOLVE(field, name)                                                                 \
    do {                                                                                     \
        *(void **)(&found.field) = dlsym(handle, name);                                      \
        if (found.field == NULL) {                                                           \
            PyErr_Format(PyExc_OSError, "%s: no %s", path, name);                            \
            dlclose(handle);                                                                 \
            return NULL;                                                                     \
        }                                                                                    \
    } while (0)

static PyObject *
mqloop_bind(PyObject *self, PyObject *args)
{
    const char *path;
    void *handle;
    Dl_info info;
    int major, minor, patch;
    zmq_api_t found;

    (void)self;
    if (!PyArg_ParseTuple(args, "s:bind", &path))
        return NULL;
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (handle == NULL) {
        const char *why = dlerror();
        PyErr_Format(PyExc_OSError, "%s is not loaded (%s)", path, why != NULL ? why : "dlopen failed");
        return NULL;
    }
    RESOLVE(msg_init, "zmq_msg_init");
    RESOLVE(msg_close, "zmq_msg_close");
    RESOLVE(msg_copy, "zmq_msg_copy");
    RESOLVE(msg_move, "zmq_msg_move");
    RESOLVE(msg_send, "zmq_msg_send");
    RESOLVE(msg_recv, "zmq_msg_recv");
    RESOLVE(msg_size, "zmq_msg_size");
    RESOLVE(msg_data, "zmq_msg_data");
    RESOLVE(msg_more, "zmq_msg_more");
    RESOLVE(send, "zmq_send");
    RESOLVE(poll, "zmq_poll");
    RESOLVE(errno_, "zmq_errno");
    RESOLVE(version, "zmq_version");
    if (zmq_lib != NULL) {
        dlclose(handle);
        if (memcmp(&found, &zmq, sizeof(zmq)) != 0) {
            PyErr_Format(PyExc_RuntimeError, "already bound to another libzmq than %s's", path);
            return NULL;
        }
    }
    else {
        zmq = found;
        zmq_lib = handle; /* kept open: the functions must stay mapped */
    }
    zmq.version(&major, &minor, &patch);
    if (dladdr(*(void **)(&zmq.msg_send), &info) == 0 || info.dli_fname == NULL)
        info.dli_fname = path;
    return Py_BuildValue("s(iii)", info.dli_fname, major, minor, patch);
}

static PyMethodDef mqloop_methods[] = {
    {"run", mqloop_run, METH_VARARGS, run_doc},
    {"bind", mqloop_bind, METH_VARARGS, bind_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mqloop_module = {
    PyModuleDef_HEAD_INIT,
    "procdevices.devices._mqloop",
    "The monitored queue's steerable loop in C (see monitoredqueuedevice.py).",
    -1,
    mqloop_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__mqloop(void)
{
    return PyModule_Create(&mqloop_module);
}
