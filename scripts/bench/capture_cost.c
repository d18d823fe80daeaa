/* What libzmq's proxy pays per message for a capture socket: the tap's PUB copy, which every
 * supervised device's loop sends (docs/performance.md, "Per-message cost").
 *
 * One process, libzmq only (no Python on the message path): a C sender thread (PUSH) ->
 * zmq_proxy_steerable(PULL in, PUSH out, capture, inproc REP control) in its own thread ->
 * the C receiver (PULL) in the main thread, over ipc. Runs the proxy without and with a
 * capture PUB (bound over ipc, no subscriber: what a device has while no tap reads), in turn,
 * and prints the proxy thread's CPU time per message (CLOCK of pthread_getcpuclockid) and
 * the rate, then the medians.
 *
 * Build against pyzmq's bundled libzmq (no zmq.h needed: the few calls are declared below):
 *
 *   LIB=$(python -c "import glob,os,zmq;print(glob.glob(os.path.join(os.path.dirname(zmq.__file__),'..','pyzmq.libs','libzmq-*'))[0])")
 *   gcc -O2 -o /tmp/capture_cost scripts/bench/capture_cost.c "$LIB" -Wl,-rpath,"$(dirname "$LIB")" -lpthread
 *   /tmp/capture_cost 64 8 "$(mktemp -d)"      # message size, rounds, a directory for ipc
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void *zmq_ctx_new(void);
int zmq_ctx_term(void *);
void *zmq_socket(void *, int);
int zmq_bind(void *, const char *);
int zmq_connect(void *, const char *);
int zmq_send(void *, const void *, size_t, int);
int zmq_recv(void *, void *, size_t, int);
int zmq_close(void *);
int zmq_setsockopt(void *, int, const void *, size_t);
int zmq_proxy_steerable(void *, void *, void *, void *);

enum { PUB = 1, REQ = 3, REP = 4, PULL = 7, PUSH = 8, SNDHWM = 23, LINGER = 17 };
static const long N = 2000000;

struct run {
    void *ctx;
    int capture, size;
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
    snprintf(out, 256, "ipc://%s/%s-%d", r->dir, name, r->capture);
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
    zmq_bind(ctl, "inproc://ctl");
    if (r->capture) { /* as tapsocket.capture_socket: a PUB that drops past its HWM */
        cap = zmq_socket(r->ctx, PUB);
        zmq_setsockopt(cap, SNDHWM, &hwm, sizeof hwm);
        endpoint(ep, r, "tap");
        zmq_bind(cap, ep);
    }
    zmq_proxy_steerable(in, out, cap, ctl); /* until TERMINATE */
    void *all[] = {in, out, ctl, cap};
    for (int i = 0; i < 4; i++)
        if (all[i]) {
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
    for (long i = 0; i < N; i++) zmq_send(s, buf, r->size, 0);
    free(buf);
    return s;
}

static void one(int capture, int size, const char *dir, double *cpu_ns, double *rate) {
    struct run r = {zmq_ctx_new(), capture, size, ""};
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
    for (long i = 1; i < N; i++) zmq_recv(rx, buf, size, 0);
    double c1 = cpu_of(d), t1 = now();
    *cpu_ns = (c1 - c0) / (N - 1) * 1e9;
    *rate = (N - 1) / (t1 - t0);
    void *tx;
    pthread_join(s, &tx);
    void *req = zmq_socket(r.ctx, REQ);
    zmq_connect(req, "inproc://ctl");
    zmq_send(req, "TERMINATE", 9, 0);
    pthread_join(d, NULL);
    void *mine[] = {rx, tx, req};
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
    double cpu[2][64], rates[2][64];
    if (rounds < 1 || rounds > 64) return 2;
    for (int k = 0; k < rounds; k++)
        for (int i = 0; i < 2; i++) {
            int capture = (k + i) % 2; /* alternate, and alternate which goes first */
            one(capture, size, argv[3], &cpu[capture][k], &rates[capture][k]);
            printf("round %d %-12s proxy CPU %6.1f ns/msg  %7.0f k msgs/s\n", k + 1,
                   capture ? "capture PUB" : "no capture", cpu[capture][k], rates[capture][k] / 1e3);
            fflush(stdout);
        }
    for (int c = 0; c < 2; c++) {
        qsort(cpu[c], rounds, sizeof(double), by_value);
        qsort(rates[c], rounds, sizeof(double), by_value);
    }
    printf("median: no capture %.1f ns/msg, capture %.1f ns/msg (%+.1f ns, %.3fx); rate %.3fx\n", cpu[0][rounds / 2],
           cpu[1][rounds / 2], cpu[1][rounds / 2] - cpu[0][rounds / 2], cpu[1][rounds / 2] / cpu[0][rounds / 2],
           rates[1][rounds / 2] / rates[0][rounds / 2]);
    return 0;
}
