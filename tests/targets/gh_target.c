/* goldenhour dump target (native C). Named pthreads in known states (a mutex
 * deadlock, a CPU worker), --heap-mb MiB of touched malloc memory, and a ticker
 * thread that appends CLOCK_MONOTONIC ns to --ticker FILE about every millisecond.
 * Build: cc -O1 -g -pthread -o gh_target_c gh_target.c
 * (Adapted from ../shared/runtime-targets/gh_target.c: READY once both deadlock threads hold a lock.) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mu_a = PTHREAD_MUTEX_INITIALIZER, mu_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t both_hold_one;       /* the two deadlock threads and main */
static volatile long sink;
static const char *ticker_path;

static void nap_ms(long ms) { struct timespec t = {ms / 1000, (ms % 1000) * 1000000L}; nanosleep(&t, NULL); }
static long long mono_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }

static void *deadlock_a(void *x) { pthread_mutex_lock(&mu_a); pthread_barrier_wait(&both_hold_one); pthread_mutex_lock(&mu_b); return x; }
static void *deadlock_b(void *x) { pthread_mutex_lock(&mu_b); pthread_barrier_wait(&both_hold_one); pthread_mutex_lock(&mu_a); return x; }
static __attribute__((noinline)) long crunch(void) { long s = 0; for (int i = 0; i < 200000; i++) s += (long)i * i; return s; }
static void *crunch_forever(void *x) { for (;;) { sink += crunch(); nap_ms(2); } return x; }
static void *tick(void *x) {
    int fd = open(ticker_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    char buf[32];
    for (;;) { nap_ms(1); int n = snprintf(buf, sizeof buf, "%lld\n", mono_ns()); if (write(fd, buf, n) < 0) break; }
    return x;
}
static void start(const char *name, void *(*fn)(void *)) {
    pthread_t t; pthread_create(&t, NULL, fn, NULL); pthread_setname_np(t, name);
}

int main(int argc, char **argv) {
    long heap_mb = 64;
    for (int i = 1; i < argc - 1; i++) {
        if (!strcmp(argv[i], "--ticker")) ticker_path = argv[++i];
        else if (!strcmp(argv[i], "--heap-mb")) heap_mb = atol(argv[++i]);
    }
    unsigned long long x = 42;                  /* text-like bytes (~6 bits/byte), not zeros (xorshift: fast) */
    for (long i = 0; i < heap_mb; i++) {
        char *p = malloc(1 << 20);
        for (int j = 0; j < (1 << 20); j++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p[j] = (char)(32 + (x & 63)); }
    }
    pthread_barrier_init(&both_hold_one, NULL, 3);
    start("gh-deadlock-a", deadlock_a);
    start("gh-deadlock-b", deadlock_b);
    start("gh-worker", crunch_forever);
    if (ticker_path) start("gh-ticker", tick);
    pthread_barrier_wait(&both_hold_one);
    printf("READY %d\n", getpid());
    fflush(stdout);
    for (;;) pause();
}
