/* client-bench: cost per call of the C client (Clients/c/p2pmetrics.c), against a raw send() of
 * the same datagram in the same run. The receiver is a live socket (floor-recv), so sends are
 * real; a full queue makes a non-blocking send fail with EAGAIN, and those are counted.
 *
 *   client-bench --socket PATH [--seconds S]   (S per measurement round, default 0.3; 3 rounds)
 *
 * Two regimes: paced (bursts of 8 calls, then a pause so the receiver drains: every send
 * succeeds - the cost of a delivered datagram) and saturated (calls back to back: the queue is
 * mostly full, so most sends fail fast with EAGAIN - the cost under overload).
 *
 * Output: key=value lines (ns per call, best of the rounds, and EAGAIN counts). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p2pmetrics.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static const p2pm_label LABELS[4][2] = {
    {{"cache_type", "chunk"}, {"peer", "peer-042"}},
    {{"cache_type", "vm_image"}, {"peer", "peer-042"}},
    {{"cache_type", "chunk"}, {"peer", "peer-043"}},
    {{"cache_type", "vm_image"}, {"peer", "peer-043"}},
};

typedef struct {
    double best_ns;
    uint64_t calls, failures;
} result;

static void keep(result *r, uint64_t calls, uint64_t ns, uint64_t failures)
{
    double per = (double)ns / (double)calls;
    if (r->calls == 0 || per < r->best_ns) r->best_ns = per;
    r->calls += calls;
    r->failures += failures;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    double seconds = 0.3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--socket")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    }
    if (!path) { fprintf(stderr, "usage: client-bench --socket PATH\n"); return 2; }
    uint64_t budget = (uint64_t)(seconds * 1e9);

    /* The exact datagram p2pm_counter_add(c, "p2p.cache.hits", 1, LABELS[0], 2) sends. */
    unsigned char dgram[128], *p = dgram;
    *p++ = 0xF5;
    *p++ = 0x01;
    const char *strings[] = {"p2p.cache.hits", NULL, "cache_type", "chunk", "peer", "peer-042"};
    for (int i = 0; i < 6; i++) {
        if (!strings[i]) { *p++ = 2; continue; }
        size_t n = strlen(strings[i]);
        *p++ = (unsigned char)n;
        memcpy(p, strings[i], n);
        p += n;
    }
    *p++ = 0x10; *p++ = 0x00; *p++ = 0x01;
    size_t dgram_len = (size_t)(p - dgram);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("client-bench: connect"); return 2; }
    p2pm_client *c = p2pm_open(path);
    if (!c) { perror("client-bench: p2pm_open"); return 2; }
    p2pm_set_mode(c, P2PM_IMMEDIATE, 0);   /* the immediate path; batches are explicit below */

    result raw = {0}, immediate = {0}, batched = {0}, batched0 = {0}, raw_paced = {0}, immediate_paced = {0},
           batched_handle = {0};
    for (int round = 0; round < 3; round++) {
        /* Paced: bursts of 8 timed calls, then an untimed pause for the receiver to drain, so
         * every send finds room in the queue - the cost of a send that succeeds. */
        uint64_t spent = 0, calls = 0, fails = 0, d_before = p2pm_dropped(c);
        for (uint64_t begin = now_ns(); now_ns() - begin < budget;) {
            uint64_t a = now_ns();
            for (int k = 0; k < 8; k++) {
                if (send(fd, dgram, dgram_len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) fails++;
            }
            spent += now_ns() - a;
            calls += 8;
            usleep(200);
        }
        keep(&raw_paced, calls, spent, fails);
        spent = 0;
        calls = 0;
        for (uint64_t begin = now_ns(); now_ns() - begin < budget;) {
            uint64_t a = now_ns();
            for (int k = 0; k < 8; k++) p2pm_counter_add(c, "p2p.cache.hits", 1, LABELS[0], 2);
            spent += now_ns() - a;
            calls += 8;
            usleep(200);
        }
        keep(&immediate_paced, calls, spent, p2pm_dropped(c) - d_before);

        /* raw send() of the same bytes, non-blocking like the client */
        uint64_t n = 0, fail = 0, t0 = now_ns(), t;
        do {
            for (int k = 0; k < 256; k++) {
                if (send(fd, dgram, dgram_len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) fail++;
            }
            n += 256;
        } while ((t = now_ns()) - t0 < budget);
        keep(&raw, n, t - t0, fail);

        /* immediate path: one validated, encoded and sent datagram per call */
        uint64_t d0 = p2pm_dropped(c);
        n = 0;
        t0 = now_ns();
        do {
            for (int k = 0; k < 256; k++) p2pm_counter_add(c, "p2p.cache.hits", 1, LABELS[0], 2);
            n += 256;
        } while ((t = now_ns()) - t0 < budget);
        keep(&immediate, n, t - t0, p2pm_dropped(c) - d0);

        /* batched path: 4 series with 2 labels each, packed into 8 KiB datagrams (sends included) */
        d0 = p2pm_dropped(c);
        n = 0;
        t0 = now_ns();
        p2pm_batch_begin(c);
        do {
            for (int k = 0; k < 256; k++) p2pm_counter_add(c, "p2p.cache.hits", 1, LABELS[k & 3], 2);
            n += 256;
        } while ((t = now_ns()) - t0 < budget);
        p2pm_batch_end(c);
        t = now_ns();
        keep(&batched, n, t - t0, p2pm_dropped(c) - d0);

        /* batched path through series handles: the same 4 series, resolved once */
        p2pm_series handles[4];
        for (int k = 0; k < 4; k++) p2pm_series_init(&handles[k], c, "p2p.cache.hits", LABELS[k], 2);
        d0 = p2pm_dropped(c);
        n = 0;
        t0 = now_ns();
        p2pm_batch_begin(c);
        do {
            for (int k = 0; k < 256; k++) p2pm_series_counter_add_u64(&handles[k & 3], 1);
            n += 256;
        } while ((t = now_ns()) - t0 < budget);
        p2pm_batch_end(c);
        t = now_ns();
        keep(&batched_handle, n, t - t0, p2pm_dropped(c) - d0);

        /* batched path, no labels */
        d0 = p2pm_dropped(c);
        n = 0;
        t0 = now_ns();
        p2pm_batch_begin(c);
        do {
            for (int k = 0; k < 256; k++) p2pm_counter_add(c, "p2p.chunks_transferred.total", 1, NULL, 0);
            n += 256;
        } while ((t = now_ns()) - t0 < budget);
        p2pm_batch_end(c);
        t = now_ns();
        keep(&batched0, n, t - t0, p2pm_dropped(c) - d0);
        usleep(50000); /* let the receiver drain between rounds */
    }
    printf("send_paced_ns=%.1f\nsend_paced_calls=%llu\nsend_paced_eagain=%llu\n", raw_paced.best_ns,
           (unsigned long long)raw_paced.calls, (unsigned long long)raw_paced.failures);
    printf("immediate_paced_ns=%.1f\nimmediate_paced_calls=%llu\nimmediate_paced_dropped=%llu\n",
           immediate_paced.best_ns, (unsigned long long)immediate_paced.calls,
           (unsigned long long)immediate_paced.failures);
    printf("send_ns=%.1f\nsend_calls=%llu\nsend_eagain=%llu\n", raw.best_ns, (unsigned long long)raw.calls,
           (unsigned long long)raw.failures);
    printf("immediate_ns=%.1f\nimmediate_calls=%llu\nimmediate_dropped=%llu\n", immediate.best_ns,
           (unsigned long long)immediate.calls, (unsigned long long)immediate.failures);
    printf("batched_ns=%.1f\nbatched_calls=%llu\nbatched_dropped_datagrams=%llu\n", batched.best_ns,
           (unsigned long long)batched.calls, (unsigned long long)batched.failures);
    printf("batched_handle_ns=%.1f\nbatched_handle_calls=%llu\n", batched_handle.best_ns,
           (unsigned long long)batched_handle.calls);
    printf("batched_nolabels_ns=%.1f\nbatched_nolabels_calls=%llu\n", batched0.best_ns,
           (unsigned long long)batched0.calls);
    p2pm_close(c);
    close(fd);
    return 0;
}
