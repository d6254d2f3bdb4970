/* p2pm-load: sends a fixed workload (workload.h) to a Unix datagram socket at full speed and
 * reports what the receiver did with it, from the receiver's own counters.
 *
 *   p2pm-load --socket PATH --mode single|batch|fill|text1|text20 [options]
 *     --duration S         seconds to send (single, batch; default 3)
 *     --series N           series to create (fill; default 1000000)
 *                          (text1, text20: the seed mix as DogStatsD text, 1 or 20 lines per
 *                          datagram; one line is one sample)
 *     --nonblock           MSG_DONTWAIT sends: a full queue drops the datagram, counted, and the
 *                          count travels in-band in the next datagram sent (PROTOCOL.md 4)
 *     --http HOST:PORT     receiver is p2pmetricsd: counters from its /metrics (self-metrics)
 *     --stats FILE         receiver is floor-recv: counters from its stats file
 *     --pid PID            receiver's process, for CPU (/proc/PID/stat) and RSS (/proc/PID/status)
 *     --per-datagram K     batch: working set of series per datagram (default 32)
 *     --batch-bytes B      batch/fill: datagram size limit (default 8192)
 *     --scrape-at MS       stall probe: GET /metrics (from --http) MS ms after the start while
 *                          sending, and report the longest gap between two consecutive completed
 *                          (blocking) sends during the scrape and outside it
 *
 * Output: key=value lines on stdout (the bench script parses them). Loopback and Unix sockets
 * only. Exit status 0 when the run is consistent (blocking: received == sent and, for the daemon,
 * applied == sent samples; non-blocking: received == sent and drops reported == drops). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "p2pm-load: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- receiver counters ---------------------------------------------------------------------- */

typedef struct {
    uint64_t datagrams;     /* datagrams received */
    uint64_t applied;       /* samples applied (daemon only) */
    uint64_t client_dropped;/* in-band drop reports (daemon only) */
    uint64_t series;        /* live series (daemon only) */
    uint64_t rejected;      /* datagrams rejected, all reasons (daemon only) */
} counters;

static const char *http_host = NULL;
static int http_port = 0;
static const char *stats_path = NULL;
static volatile uint64_t *floor_stats = NULL;

static int http_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)http_port)};
    if (inet_pton(AF_INET, http_host, &a.sin_addr) != 1) { errno = EINVAL; die("--http host"); }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect to /metrics");
    const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) die("write request");
    return fd;
}

/* Value of the line starting with `name ` in buf, or -1 (all values here are integers). */
static double find_value(const char *buf, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = buf; (p = strstr(p, name)) != NULL; p += n) {
        if ((p == buf || p[-1] == '\n') && p[n] == ' ') return strtod(p + n + 1, NULL);
    }
    return -1;
}

static const char *REJECT_REASONS_PREFIX = "p2pmetricsd_datagrams_rejected_total{reason=";
static const char *TEXT_REJECT_REASONS_PREFIX = "p2pmetricsd_text_lines_rejected_total{reason=";

/* Reads the daemon's self-metrics: they come first in /metrics, so only the head is read. */
static counters read_daemon(void)
{
    static char buf[1 << 18];
    int fd = http_connect();
    size_t len = 0;
    counters c = {0};
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = 0;
        if (strstr(buf, "p2pmetricsd_series ") && strstr(buf, "p2pmetricsd_series_memory_bytes")) break;
        if (len == sizeof buf - 1) break;
    }
    /* Read the rest too: closing a scrape early makes the daemon's next write fail, and a
     * process that does not ignore SIGPIPE dies of it. A scraper reads the whole response. */
    static char sink[1 << 16];
    while (read(fd, sink, sizeof sink) > 0) {}
    close(fd);
    double v;
    if ((v = find_value(buf, "p2pmetricsd_datagrams_received_total")) < 0) {
        fprintf(stderr, "p2pm-load: no p2pmetricsd_datagrams_received_total in /metrics\n");
        exit(2);
    }
    c.datagrams = (uint64_t)v;
    c.applied = (uint64_t)find_value(buf, "p2pmetricsd_samples_applied_total");
    c.client_dropped = (uint64_t)find_value(buf, "p2pmetricsd_client_dropped_datagrams_total");
    c.series = (uint64_t)find_value(buf, "p2pmetricsd_series");
    for (const char *p = buf; (p = strstr(p, REJECT_REASONS_PREFIX)) != NULL; p++) {
        const char *sp = strchr(p, ' ');
        if (sp) c.rejected += (uint64_t)strtod(sp + 1, NULL);
    }
    /* a refused text line counts as a rejection too (text modes: one line, one sample) */
    for (const char *p = buf; (p = strstr(p, TEXT_REJECT_REASONS_PREFIX)) != NULL; p++) {
        const char *sp = strchr(p, ' ');
        if (sp) c.rejected += (uint64_t)strtod(sp + 1, NULL);
    }
    return c;
}

static counters read_counters(void)
{
    if (http_host) return read_daemon();
    counters c = {0};
    if (floor_stats) c.datagrams = __atomic_load_n(&floor_stats[0], __ATOMIC_ACQUIRE);
    return c;
}

/* ---- process CPU and memory ----------------------------------------------------------------- */

static double proc_cpu_s(int pid, double *system_s)
{
    if (pid <= 0) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p) return 0;
    unsigned long long utime = 0, stime = 0;
    /* fields after comm: state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return 0;
    if (system_s) *system_s = (double)stime / (double)sysconf(_SC_CLK_TCK);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_status_kb(int pid, const char *key)
{
    if (pid <= 0) return 0;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long kb = 0;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, n) == 0 && line[n] == ':') { kb = strtol(line + n + 1, NULL, 10); break; }
    }
    fclose(f);
    return kb;
}

/* ---- stall probe: a scrape running while we send ------------------------------------------ */

static _Atomic uint64_t scrape_start_ns, scrape_end_ns;
static uint64_t scrape_bytes;
static int scrape_at_ms = -1;

static void *scraper(void *arg)
{
    uint64_t t0 = *(uint64_t *)arg;
    uint64_t due = t0 + (uint64_t)scrape_at_ms * 1000000ULL;
    while (now_ns() < due) usleep(1000);
    static char buf[1 << 20];
    uint64_t s = now_ns();
    atomic_store(&scrape_start_ns, s);
    int fd = http_connect();
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        total += (uint64_t)n;
    }
    close(fd);
    scrape_bytes = total;
    atomic_store(&scrape_end_ns, now_ns());
    return NULL;
}

/* ---- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *socket_path = NULL, *mode = "single";
    double duration = 3;
    size_t fill_series = 1000000, per_datagram = 32, batch_bytes = 8192;
    bool nonblock = false;
    int pid = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--nonblock")) { nonblock = true; continue; }
        if (!v) { fprintf(stderr, "p2pm-load: %s needs a value\n", a); return 2; }
        i++;
        if (!strcmp(a, "--socket")) socket_path = v;
        else if (!strcmp(a, "--mode")) mode = v;
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--series")) fill_series = (size_t)atol(v);
        else if (!strcmp(a, "--per-datagram")) per_datagram = (size_t)atol(v);
        else if (!strcmp(a, "--batch-bytes")) batch_bytes = (size_t)atol(v);
        else if (!strcmp(a, "--pid")) pid = atoi(v);
        else if (!strcmp(a, "--stats")) stats_path = v;
        else if (!strcmp(a, "--scrape-at")) scrape_at_ms = atoi(v);
        else if (!strcmp(a, "--http")) {
            static char host[64];
            const char *colon = strrchr(v, ':');
            if (!colon || (size_t)(colon - v) >= sizeof host) { fprintf(stderr, "p2pm-load: --http HOST:PORT\n"); return 2; }
            memcpy(host, v, (size_t)(colon - v));
            host[colon - v] = 0;
            http_host = host;
            http_port = atoi(colon + 1);
        } else { fprintf(stderr, "p2pm-load: unknown option %s\n", a); return 2; }
    }
    if (!socket_path) { fprintf(stderr, "usage: p2pm-load --socket PATH --mode single|batch|fill|text1|text20 ...\n"); return 2; }
    if (http_host && strcmp(http_host, "127.0.0.1") && strcmp(http_host, "localhost")) {
        fprintf(stderr, "p2pm-load: --http must be on 127.0.0.1\n");
        return 2;
    }
    if (stats_path) {
        int fd = open(stats_path, O_RDONLY);
        if (fd < 0) die("open --stats");
        void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) die("mmap --stats");
        floor_stats = m;
        close(fd);
    }

    wl_workload w = {0};
    bool fill = !strcmp(mode, "fill");
    if (!strcmp(mode, "single")) wl_build_single(&w);
    else if (!strcmp(mode, "batch")) wl_build_batch(&w, 512, batch_bytes, per_datagram);
    else if (fill) wl_build_fill(&w, fill_series, batch_bytes);
    else if (!strcmp(mode, "text1")) wl_build_text(&w, 1, 10400);
    else if (!strcmp(mode, "text20")) wl_build_text(&w, 20, 1040);
    else { fprintf(stderr, "p2pm-load: unknown mode %s\n", mode); return 2; }
    if (nonblock && !strncmp(mode, "text", 4)) {
        fprintf(stderr, "p2pm-load: --nonblock needs a binary mode (drop reports travel in binary datagrams)\n");
        return 2;
    }

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; die("--socket"); }
    strcpy(addr.sun_path, socket_path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect to the socket");

    counters before = read_counters();
    double sys0 = 0, sys1 = 0, cpu0 = proc_cpu_s(pid, &sys0);
    long rss0 = proc_status_kb(pid, "VmRSS");

    uint64_t sent = 0, sent_samples = 0, drops = 0, pending = 0, reports = 0, attempts = 0;
    uint64_t gap_max_in = 0, gap_max_out = 0, gaps_in = 0, gaps_over_1ms_in = 0, gaps_over_1ms_out = 0;
    pthread_t scrape_thread;
    uint64_t t0_ns = now_ns();
    double t0 = now_s();
    if (scrape_at_ms >= 0) {
        if (!http_host) { fprintf(stderr, "p2pm-load: --scrape-at needs --http\n"); return 2; }
        pthread_create(&scrape_thread, NULL, scraper, &t0_ns);
    }
    double deadline = t0 + duration;
    int flags = MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0);
    uint64_t prev_ns = t0_ns;
    size_t j = 0;
    for (;;) {
        if (fill) {
            if (j == w.n_pool) break;
        } else if ((attempts & 63) == 0 && now_s() >= deadline) {
            if (scrape_at_ms < 0 || atomic_load(&scrape_end_ns) != 0) break;
        }
        const wl_datagram *d = &w.pool[j];
        ssize_t r;
        attempts++;
        if (pending) {
            /* in-band drop report: magic, dropped record, then the datagram's records */
            unsigned char head[12] = {0xF5, 0x02};
            unsigned char *e = wl_uvarint(head + 2, pending);
            struct iovec iov[2] = {{head, (size_t)(e - head)}, {d->bytes + 1, d->len - 1}};
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
            r = sendmsg(fd, &mh, flags);
            if (r >= 0) { reports += pending; pending = 0; }
        } else {
            r = send(fd, d->bytes, d->len, flags);
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == ENOBUFS) { drops++; pending++; }
            else if (errno != EINTR) die("send");
        } else {
            sent++;
            sent_samples += d->samples;
            if (scrape_at_ms >= 0) {
                uint64_t t = now_ns(), gap = t - prev_ns;
                uint64_t s0 = atomic_load(&scrape_start_ns), s1 = atomic_load(&scrape_end_ns);
                /* a gap belongs to the scrape when it overlaps the scrape's window */
                bool in = s0 && t >= s0 && (s1 == 0 || prev_ns <= s1);
                if (in) { gaps_in++; if (gap > gap_max_in) gap_max_in = gap; if (gap > 1000000) gaps_over_1ms_in++; }
                else { if (gap > gap_max_out) gap_max_out = gap; if (gap > 1000000) gaps_over_1ms_out++; }
                prev_ns = t;
            }
        }
        if (++j == w.n_pool && !fill) j = 0;
    }
    double t_sent = now_s();
    if (pending) {
        /* final report of the drops not yet reported: a datagram with only the dropped record */
        unsigned char head[12] = {0xF5, 0x02};
        unsigned char *e = wl_uvarint(head + 2, pending);
        if (send(fd, head, (size_t)(e - head), MSG_NOSIGNAL) < 0) die("send final drop report");
        reports += pending;
        pending = 0;
        sent++;
    }
    if (scrape_at_ms >= 0) pthread_join(scrape_thread, NULL);

    /* Wait until the receiver has read everything that was sent (it was queued, so it will). */
    counters after;
    double t_end;
    for (;;) {
        after = read_counters();
        t_end = now_s();
        if (after.datagrams - before.datagrams >= sent) break;
        if (t_end - t_sent > 20) { fprintf(stderr, "p2pm-load: receiver did not catch up in 20 s\n"); break; }
        usleep(1000);
    }
    if (http_host) {
        /* the receive counter moves before the datagram is applied: one more read for `applied` */
        after = read_counters();
    }
    double cpu1 = proc_cpu_s(pid, &sys1);
    double elapsed = t_end - t0;
    uint64_t rx = after.datagrams - before.datagrams;

    printf("mode=%s\nnonblock=%d\n", mode, nonblock);
    printf("pool_datagrams=%zu\npool_samples=%llu\npool_bytes=%llu\n", w.n_pool,
           (unsigned long long)w.pool_samples, (unsigned long long)w.pool_bytes);
    printf("samples_per_datagram=%.2f\nbytes_per_datagram=%.1f\n", (double)w.pool_samples / (double)w.n_pool,
           (double)w.pool_bytes / (double)w.n_pool);
    printf("attempts=%llu\nsent_datagrams=%llu\nsent_samples=%llu\ndrops=%llu\ndrops_reported_inband=%llu\n",
           (unsigned long long)attempts, (unsigned long long)sent, (unsigned long long)sent_samples,
           (unsigned long long)drops, (unsigned long long)reports);
    printf("send_seconds=%.4f\nelapsed_seconds=%.4f\n", t_sent - t0, elapsed);
    printf("received_datagrams=%llu\n", (unsigned long long)rx);
    printf("received_datagrams_per_s=%.0f\n", (double)rx / elapsed);
    printf("sent_samples_per_s=%.0f\n", (double)sent_samples / elapsed);
    int ok = rx == sent;
    if (http_host) {
        uint64_t applied = after.applied - before.applied;
        uint64_t reported = after.client_dropped - before.client_dropped;
        uint64_t rejected = after.rejected - before.rejected;
        printf("applied_samples=%llu\napplied_samples_per_s=%.0f\n", (unsigned long long)applied,
               (double)applied / elapsed);
        printf("daemon_client_dropped=%llu\ndaemon_rejected_datagrams=%llu\ndaemon_series=%llu\n",
               (unsigned long long)reported, (unsigned long long)rejected, (unsigned long long)after.series);
        ok = ok && applied == sent_samples && reported == drops && rejected == 0;
    } else {
        printf("applied_samples_per_s=%.0f\n", (double)rx / elapsed * ((double)w.pool_samples / (double)w.n_pool));
    }
    if (pid > 0) {
        printf("cpu_seconds=%.3f\ncpu_percent=%.1f\n", cpu1 - cpu0, 100 * (cpu1 - cpu0) / elapsed);
        printf("system_cpu_seconds=%.3f\n", sys1 - sys0);  /* the kernel's share (receive, wakeups) */
        printf("rss_before_kb=%ld\nrss_kb=%ld\nhwm_kb=%ld\n", rss0, proc_status_kb(pid, "VmRSS"),
               proc_status_kb(pid, "VmHWM"));
    }
    if (scrape_at_ms >= 0) {
        double sd = (double)(atomic_load(&scrape_end_ns) - atomic_load(&scrape_start_ns)) / 1e9;
        printf("scrape_seconds=%.4f\nscrape_bytes=%llu\n", sd, (unsigned long long)scrape_bytes);
        printf("sends_during_scrape=%llu\n", (unsigned long long)gaps_in);
        printf("max_gap_during_scrape_ms=%.3f\nmax_gap_outside_scrape_ms=%.3f\n", (double)gap_max_in / 1e6,
               (double)gap_max_out / 1e6);
        printf("gaps_over_1ms_during_scrape=%llu\ngaps_over_1ms_outside_scrape=%llu\n",
               (unsigned long long)gaps_over_1ms_in, (unsigned long long)gaps_over_1ms_out);
    }
    printf("consistent=%d\n", ok);
    return ok ? 0 : 1;
}
