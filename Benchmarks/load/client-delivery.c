/* client-delivery: does every sample arrive? The C client (Clients/c, default mode unless told
 * otherwise) against a running p2pmetricsd, at full speed from several threads.
 *
 *   client-delivery --socket PATH [--http HOST:PORT] [--workload flat|seed] [--threads T]
 *                   [--calls N] [--mode buffered|immediate|blocking] [--visibility K]
 *
 *   flat   T threads x N seed-helper calls back to back (chunk transfer, cache access,
 *          verification, import, download in turn)
 *   seed   the seed-shaped workload of Clients/c/tests/seed_workload.h (one call per event)
 *
 * Then it flushes, and with --http polls the daemon's /metrics until it applied what the client
 * sent (p2pmetricsd_samples_applied_total; 10 s at most), and measures the end-to-end visibility
 * delay K times: a gauge set, then /metrics polled until the value shows (delay from the call).
 * Output: key=value lines (latencies in microseconds). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "p2pmetrics.h"
#include "tests/seed_workload.h"

enum { MAX_THREADS = 64 };

static p2pm_client *client;
static int calls_per_thread = 100000, threads = 4, seed_workload;

struct worker {
    pthread_t tid;
    int id;
    uint64_t *lat;   /* ns per call, preallocated */
    size_t n;
    long failures;
};

static void keep_latency(void *ctx, uint64_t ns)
{
    struct worker *w = ctx;
    w->lat[w->n++] = ns;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    if (seed_workload) {
        seed_run(client, w->id, threads, keep_latency, w, &w->failures);
        return NULL;
    }
    static const char *const types[4] = { "microvm", "container", "storepath", "closure" };
    for (int i = 0; i < calls_per_thread; i++) {
        uint64_t t0 = seed_now_ns();
        int rc;
        switch (i % 5) {
        case 0: rc = p2pm_record_chunk_transfer(client, 65536, i % 3 == 0); break;
        case 1: rc = p2pm_record_cache_access(client, i % 2 == 0, "chunk"); break;
        case 2: rc = p2pm_record_verification(client, true, "chunk_hash"); break;
        case 3: rc = p2pm_record_image_import(client, types[i % 4], true, 1u << 20); break;
        default: rc = p2pm_record_image_download(client, "img", true, 0.25); break;
        }
        keep_latency(w, seed_now_ns() - t0);
        w->failures += rc != 0;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* GET /metrics; returns the body in buf (NUL-terminated) or -1. */
static int scrape(const char *http, char *buf, size_t cap)
{
    char host[64];
    int port;
    if (sscanf(http, "%63[^:]:%d", host, &port) != 2)
        return -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, host, &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    const char *req = "GET /metrics HTTP/1.0\r\n\r\n";
    if (write(fd, req, strlen(req)) < 0) {
        close(fd);
        return -1;
    }
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    close(fd);
    return 0;
}

/* The value of an unlabelled metric in the exposition, or -1. */
static double metric(const char *body, const char *name)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(body, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *http = NULL, *mode = "buffered";
    int visibility = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--socket")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--http")) http = argv[i + 1];
        else if (!strcmp(argv[i], "--workload")) seed_workload = !strcmp(argv[i + 1], "seed");
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calls")) calls_per_thread = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mode")) mode = argv[i + 1];
        else if (!strcmp(argv[i], "--visibility")) visibility = atoi(argv[i + 1]);
        else { fprintf(stderr, "client-delivery: unknown option %s\n", argv[i]); return 2; }
    }
    if (!path || threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "usage: client-delivery --socket PATH [options] (see the source)\n");
        return 2;
    }
    if (!(client = p2pm_open(path))) {
        perror("client-delivery: p2pm_open");
        return 2;
    }
    if (strcmp(mode, "immediate") == 0)
        p2pm_set_mode(client, P2PM_IMMEDIATE, 0);
    else if (strcmp(mode, "blocking") == 0)
        p2pm_set_mode(client, P2PM_BLOCKING, P2PM_SEND_WAIT_MS);

    size_t per = seed_workload ? SEED_CALLS : (size_t)calls_per_thread;
    struct worker w[MAX_THREADS];
    uint64_t *all = malloc(sizeof *all * per * (size_t)threads);
    if (!all)
        return 2;
    uint64_t t0 = seed_now_ns();
    for (int i = 0; i < threads; i++) {
        w[i] = (struct worker){ .id = i, .lat = all + per * (size_t)i };
        pthread_create(&w[i].tid, NULL, work, &w[i]);
    }
    size_t n = 0;
    long failures = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].tid, NULL);
        failures += w[i].failures;
    }
    double burst_s = (double)(seed_now_ns() - t0) / 1e9;
    for (int i = 0; i < threads; i++) {   /* compact: the seed workload's threads differ in n */
        memmove(all + n, w[i].lat, w[i].n * sizeof *all);
        n += w[i].n;
    }
    p2pm_flush(client);
    p2pm_stats st;
    p2pm_get_stats(client, &st);
    qsort(all, n, sizeof *all, cmp_u64);
    printf("calls=%zu\nfailed_calls=%ld\nburst_seconds=%.3f\n", n, failures, burst_s);
    printf("latency_p50_us=%.2f\nlatency_p99_us=%.2f\nlatency_max_us=%.1f\n", all[n / 2] / 1e3,
           all[n * 99 / 100] / 1e3, all[n - 1] / 1e3);
    printf("sent_datagrams=%llu\nsent_samples=%llu\ndropped_datagrams=%llu\ndropped_samples=%llu\n"
           "kept_samples=%llu\nresent_adds=%llu\nwaits=%llu\n",
           (unsigned long long)st.sent_datagrams, (unsigned long long)st.sent_samples,
           (unsigned long long)st.dropped_datagrams, (unsigned long long)st.dropped_samples,
           (unsigned long long)st.kept_samples, (unsigned long long)st.resent_adds,
           (unsigned long long)st.waits);
    if (http) {
        static char body[1 << 22];
        double applied = -1, want = (double)(st.sent_samples + st.resent_adds);
        for (uint64_t until = seed_now_ns() + 10000000000u; seed_now_ns() < until;) {
            if (scrape(http, body, sizeof body) == 0 &&
                (applied = metric(body, "p2pmetricsd_samples_applied_total")) >= want)
                break;
            usleep(10000);
        }
        printf("applied_samples=%.0f\n", applied);
        /* drops travel with the next datagram that gets through: send one, then read the count */
        double reported = metric(body, "p2pmetricsd_client_dropped_datagrams_total");
        if (st.dropped_datagrams) {
            p2pm_gauge_set(client, "bench.final", 1, NULL, 0);
            p2pm_flush(client);
            p2pm_get_stats(client, &st);
            for (uint64_t until = seed_now_ns() + 10000000000u; seed_now_ns() < until;) {
                if (scrape(http, body, sizeof body) == 0 &&
                    (reported = metric(body, "p2pmetricsd_client_dropped_datagrams_total")) >=
                        (double)st.dropped_datagrams)
                    break;
                usleep(10000);
            }
        }
        printf("reported_drops=%.0f\nclient_dropped_datagrams=%llu\n", reported,
               (unsigned long long)st.dropped_datagrams);
        /* visibility: a fresh value each time, polled until it shows */
        uint64_t worst = 0, sum = 0;
        int seen = 0;
        for (int k = 1; k <= visibility; k++) {
            usleep(50000);
            uint64_t start = seed_now_ns();
            p2pm_gauge_set(client, "bench.visibility.marker", k, NULL, 0);
            for (uint64_t until = start + 2000000000u; seed_now_ns() < until;)
                if (scrape(http, body, sizeof body) == 0 &&
                    metric(body, "bench_visibility_marker") == k) {
                    uint64_t d = seed_now_ns() - start;
                    worst = d > worst ? d : worst;
                    sum += d;
                    seen++;
                    break;
                }
        }
        if (visibility)
            printf("visibility_mean_ms=%.2f\nvisibility_max_ms=%.2f\nvisibility_seen=%d/%d\n",
                   seen ? sum / 1e6 / seen : -1, worst / 1e6, seen, visibility);
    }
    p2pm_close(client);
    free(all);
    return 0;
}
