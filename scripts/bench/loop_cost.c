/* What a forwarding loop's structure costs per message, libzmq alone (no Python on the
 * message path): docs/performance.md, "Per-message cost".
 *
 * One process: a C sender thread (PUSH) -> the loop (PULL in, PUSH out) in its own thread ->
 * the C receiver (PULL) in the main thread, over ipc. Four loops run in turn, each round in
 * another order, and the loop thread's CPU time per message is printed (pthread_getcpuclockid),
 * with the rate, then the medians and their ratios to the first:
 *
 *   proxy          zmq_proxy without a control socket: what pyzmq's devices run
 *   proxy+control  zmq_proxy_steerable with an inproc REP control socket: libzmq's steerable
 *                  proxy, what procdevices' devices ran before the C loop
 *   +capture       the same with a capture PUB (bound over ipc, no subscriber): what a
 *                  supervised device's tap cost it before the capture was switched off
 *                  while no tap reads (session 5)
 *   poll+control   the structure of procdevices' C loop (_mqloop.c relay/serve): one
 *                  zmq_poll per batch over the sockets that can be readable (in, control; a
 *                  PUSH out is not), up to 512 messages relayed per batch
 *
 * libzmq's proxy polls all of its sockets twice per turn (a blocking wait, then a poll of
 * everything), and each poll of an idle socket is a system call on its mailbox.
 *
 * Build against pyzmq's bundled libzmq (no zmq.h needed: the few calls are declared below):
 *
 *   LIB=$(python -c "import glob,os,zmq;print(glob.glob(os.path.join(os.path.dirname(zmq.__file__),'..','pyzmq.libs','libzmq-*'))[0])")
 *   gcc -O2 -o /tmp/loop_cost scripts/bench/loop_cost.c "$LIB" -Wl,-rpath,"$(dirname "$LIB")" -lpthread
 *   /tmp/loop_cost 64 8 "$(mktemp -d)"      # message size, rounds, a directory for ipc
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef union {
    unsigned char _[64];
    void *p;
} zmq_msg_t;
typedef struct {
    void *socket;
    int fd;
    short events;
    short revents;
} zmq_pollitem_t;

void *zmq_ctx_new(void);
int zmq_ctx_term(void *);
int zmq_ctx_shutdown(void *);
void *zmq_socket(void *, int);
int zmq_bind(void *, const char *);
int zmq_connect(void *, const char *);
int zmq_send(void *, const void *, size_t, int);
int zmq_recv(void *, void *, size_t, int);
int zmq_close(void *);
int zmq_setsockopt(void *, int, const void *, size_t);
int zmq_proxy_steerable(void *, void *, void *, void *);
int zmq_poll(zmq_pollitem_t *, int, long);
int zmq_msg_init(zmq_msg_t *);
int zmq_msg_recv(zmq_msg_t *, void *, int);
int zmq_msg_send(zmq_msg_t *, void *, int);
int zmq_msg_more(const zmq_msg_t *);
int zmq_msg_close(zmq_msg_t *);

enum { PUB = 1, REQ = 3, REP = 4, PULL = 7, PUSH = 8, LINGER = 17, SNDHWM = 23, DONTWAIT = 1, SNDMORE = 2, POLLIN = 1 };
enum { PROXY, PROXY_CONTROL, PROXY_CAPTURE, POLL_CONTROL, LOOPS };
static const char *NAMES[LOOPS] = {"proxy", "proxy+control", "+capture", "poll+control"};
static const long N = 2000000;

struct run {
    void *ctx;
    int loop, size;
    char dir[200];
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu_of(pthread_t thread) {
    clockid_t clock;
    struct timespec t;
    pthread_getcpuclockid(thread, &clock);
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void endpoint(char *out, const struct run *r, const char *name) {
    snprintf(out, 256, "ipc://%s/%s-%d", r->dir, name, r->loop);
}

/* _mqloop.c's serve/relay, without the monitor and the signal checks */
static void poll_loop(void *in, void *out, void *ctl) {
    zmq_pollitem_t items[2] = {{in, 0, POLLIN, 0}, {ctl, 0, POLLIN, 0}};
    zmq_msg_t m;
    char command[32];
    zmq_msg_init(&m);
    for (;;) {
        if (zmq_poll(items, 2, -1) < 0)
            break;
        if (items[1].revents & POLLIN) {
            int n = zmq_recv(ctl, command, sizeof command, 0);
            zmq_send(ctl, "", 0, 0);
            if (n == 9 && memcmp(command, "TERMINATE", 9) == 0)
                break;
        }
        if (items[0].revents & POLLIN)
            for (int b = 0; b < 512; b++) {
                if (zmq_msg_recv(&m, in, DONTWAIT) < 0)
                    break;
                zmq_msg_send(&m, out, zmq_msg_more(&m) ? SNDMORE : 0);
            }
    }
    zmq_msg_close(&m);
}

static void *device(void *arg) {
    struct run *r = arg;
    char ep[256];
    int zero = 0, hwm = 1000;
    void *in = zmq_socket(r->ctx, PULL), *out = zmq_socket(r->ctx, PUSH), *ctl = zmq_socket(r->ctx, REP);
    void *cap = NULL;
    endpoint(ep, r, "in");
    zmq_bind(in, ep);
    endpoint(ep, r, "out");
    zmq_bind(out, ep);
    zmq_bind(ctl, "inproc://ctl"); /* every loop has one; the proxy alone does not use it */
    if (r->loop == PROXY_CAPTURE) { /* as tapsocket.capture_socket: a PUB that drops past its HWM */
        cap = zmq_socket(r->ctx, PUB);
        zmq_setsockopt(cap, SNDHWM, &hwm, sizeof hwm);
        endpoint(ep, r, "tap");
        zmq_bind(cap, ep);
    }
    if (r->loop == POLL_CONTROL)
        poll_loop(in, out, ctl);
    else /* until TERMINATE, or the context's shutdown without a control socket */
        zmq_proxy_steerable(in, out, cap, r->loop == PROXY ? NULL : ctl);
    void *all[] = {in, out, ctl, cap};
    for (int i = 0; i < 4; i++)
        if (all[i] != NULL) {
            zmq_setsockopt(all[i], LINGER, &zero, sizeof zero);
            zmq_close(all[i]);
        }
    return NULL;
}

static void *sender(void *arg) {
    struct run *r = arg;
    char ep[256], *buf = calloc(1, r->size);
    void *s = zmq_socket(r->ctx, PUSH);
    endpoint(ep, r, "in");
    zmq_connect(s, ep);
    for (long i = 0; i < N; i++)
        zmq_send(s, buf, r->size, 0);
    free(buf);
    return s;
}

static void one(int loop, int size, const char *dir, double *cpu_ns, double *rate) {
    struct run r = {zmq_ctx_new(), loop, size, ""};
    snprintf(r.dir, sizeof r.dir, "%s", dir);
    pthread_t d, s;
    char ep[256], *buf = malloc(size + 1);
    int zero = 0;
    pthread_create(&d, NULL, device, &r);
    usleep(100000); /* the device has bound */
    void *rx = zmq_socket(r.ctx, PULL);
    endpoint(ep, &r, "out");
    zmq_connect(rx, ep);
    pthread_create(&s, NULL, sender, &r);
    zmq_recv(rx, buf, size, 0);
    double c0 = cpu_of(d), t0 = now();
    for (long i = 1; i < N; i++)
        zmq_recv(rx, buf, size, 0);
    double c1 = cpu_of(d), t1 = now();
    *cpu_ns = (c1 - c0) / (N - 1) * 1e9;
    *rate = (N - 1) / (t1 - t0);
    void *tx;
    pthread_join(s, &tx);
    void *req = zmq_socket(r.ctx, REQ);
    void *mine[] = {rx, tx, req};
    if (loop == PROXY) {
        zmq_ctx_shutdown(r.ctx); /* no control socket: the proxy returns with ETERM */
    } else {
        zmq_connect(req, "inproc://ctl");
        zmq_send(req, "TERMINATE", 9, 0);
    }
    pthread_join(d, NULL);
    for (int i = 0; i < 3; i++) {
        zmq_setsockopt(mine[i], LINGER, &zero, sizeof zero);
        zmq_close(mine[i]);
    }
    zmq_ctx_term(r.ctx);
    free(buf);
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SIZE ROUNDS DIRECTORY\n", argv[0]);
        return 2;
    }
    int size = atoi(argv[1]), rounds = atoi(argv[2]);
    double cpu[LOOPS][64], rates[LOOPS][64];
    if (rounds < 1 || rounds > 64)
        return 2;
    for (int k = 0; k < rounds; k++)
        for (int i = 0; i < LOOPS; i++) {
            int loop = (k + i) % LOOPS; /* each round starts with another loop */
            one(loop, size, argv[3], &cpu[loop][k], &rates[loop][k]);
            printf("round %d %-14s loop CPU %7.1f ns/msg  %7.0f k msgs/s\n", k + 1, NAMES[loop], cpu[loop][k],
                   rates[loop][k] / 1e3);
            fflush(stdout);
        }
    for (int l = 0; l < LOOPS; l++) {
        qsort(cpu[l], rounds, sizeof(double), by_value);
        qsort(rates[l], rounds, sizeof(double), by_value);
    }
    for (int l = 0; l < LOOPS; l++)
        printf("median %-14s %7.1f ns/msg (%.3fx proxy's), rate %.3fx\n", NAMES[l], cpu[l][rounds / 2],
               cpu[l][rounds / 2] / cpu[PROXY][rounds / 2], rates[l][rounds / 2] / rates[PROXY][rounds / 2]);
    return 0;
}
