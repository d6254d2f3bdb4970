/*
 * e2e_driver.c - drives one client from the command line, for the end-to-end tests
 * (Tests/integration/test_c_client.py) against a running p2pmetricsd.
 *
 * usage: e2e_driver SOCKET COMMAND [ARGS]... [COMMAND [ARGS]...]...
 *   SOCKET "-" uses the default client (NULL: $P2PM_SOCKET).
 * Commands (a call dropped with -EAGAIN is retried every millisecond, except tstart/tend; a call
 * failing otherwise exits with status 2, unless noted):
 *   import TYPE OK SIZE       p2pm_record_image_import (OK: 1 or 0)
 *   download ID OK SECS       p2pm_record_image_download
 *   chunk SIZE DEDUP          p2pm_record_chunk_transfer
 *   chunkh SIZE DEDUP HASH    p2pm_record_chunk_transfer_hash
 *   request HASH              p2pm_record_chunk_request
 *   verify OK TYPE            p2pm_record_verification
 *   cache HIT TYPE            p2pm_record_cache_access
 *   tstart / tend             p2pm_transfer_start / p2pm_transfer_end (one guard)
 *   counter|gauge_set|gauge_add|observe NAME VALUE LABELS    LABELS: "-" or "k=v,k2=v2"
 *   u64 NAME VALUE            p2pm_counter_add_u64
 *   batch_begin, batch_end, flush
 *   threads T N NAME          T threads, each N times counter NAME{thread=i} += 1 on the one
 *                             client, every call retried until it is sent; prints
 *                             "threads calls=.. retries=.."
 *   flood N NAME              N times counter NAME += 1, failures counted, not fatal; prints
 *                             "flood sent=.. dropped=.. first_error=.."
 *   final NAME                counter NAME += 1, retried every 10 ms until sent (20 s at most);
 *                             prints "final attempts=.."
 *   wait                      prints "waiting" and reads one line from stdin
 *   stats                     prints "dropped=.." (p2pm_dropped)
 *   mode buffered|immediate|blocking MS    p2pm_set_mode (the client's default: buffered)
 *   seed T                    the seed-shaped workload (tests/seed_workload.h) from T threads,
 *                             calls never retried; prints "seed calls=.. failures=.."
 *   fullstats                 prints "fullstats sent_datagrams=.. sent_samples=..
 *                             dropped_datagrams=.. dropped_samples=.. kept_samples=..
 *                             resent_adds=.. waits=.."
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "p2pmetrics.h"
#include "seed_workload.h"

static p2pm_client *client;

static void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static void need(int rc, const char *cmd)
{
    if (rc != 0) {
        fprintf(stderr, "e2e_driver: %s: %s (%d)\n", cmd, strerror(-rc), rc);
        exit(2);
    }
}

/* Parses "-" or "k=v,k2=v2" in place. */
static size_t parse_labels(char *s, p2pm_label *out)
{
    size_t n = 0;
    if (strcmp(s, "-") == 0)
        return 0;
    for (char *save = NULL, *kv = strtok_r(s, ",", &save); kv && n < 16;
         kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "e2e_driver: bad label %s\n", kv);
            exit(2);
        }
        *eq = 0;
        out[n++] = (p2pm_label){ kv, eq + 1 };
    }
    return n;
}

struct worker {
    pthread_t tid;
    int id, calls;
    const char *name;
    long retries;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    char id[16];
    snprintf(id, sizeof id, "%d", w->id);
    p2pm_label l = { "thread", id };
    for (int i = 0; i < w->calls; i++)
        while (p2pm_counter_add(client, w->name, 1, &l, 1) != 0) {
            w->retries++;
            sleep_us(50);
        }
    return NULL;
}

static void threads(int t, int n, const char *name)
{
    struct worker w[64];
    long retries = 0;
    if (t < 1 || t > 64)
        exit(2);
    for (int i = 0; i < t; i++) {
        w[i] = (struct worker){ .id = i, .calls = n, .name = name };
        if (pthread_create(&w[i].tid, NULL, work, &w[i]) != 0)
            exit(2);
    }
    for (int i = 0; i < t; i++) {
        pthread_join(w[i].tid, NULL);
        retries += w[i].retries;
    }
    printf("threads calls=%d retries=%ld\n", t * n, retries);
}

struct seed_worker {
    pthread_t tid;
    int id, threads;
    long failures;
};

static void *seed_main(void *arg)
{
    struct seed_worker *w = arg;
    seed_run(client, w->id, w->threads, NULL, NULL, &w->failures);
    return NULL;
}

static void seed(int t)
{
    struct seed_worker w[64];
    long failures = 0;
    if (t < 1 || t > 64)
        exit(2);
    for (int i = 0; i < t; i++) {
        w[i] = (struct seed_worker){ .id = i, .threads = t };
        if (pthread_create(&w[i].tid, NULL, seed_main, &w[i]) != 0)
            exit(2);
    }
    for (int i = 0; i < t; i++) {
        pthread_join(w[i].tid, NULL);
        failures += w[i].failures;
    }
    printf("seed calls=%d failures=%ld\n", SEED_CALLS, failures);
}

enum { NOT_SIMPLE = 1 };

static const struct {
    const char *name;
    int args;
} simple_commands[] = {
    { "import", 3 }, { "download", 3 }, { "chunk", 2 }, { "verify", 2 }, { "cache", 2 },
    { "tstart", 0 }, { "tend", 0 }, { "counter", 3 }, { "gauge_set", 3 }, { "gauge_add", 3 },
    { "observe", 3 }, { "u64", 2 }, { "batch_begin", 0 }, { "batch_end", 0 }, { "flush", 0 },
    { "chunkh", 3 }, { "request", 1 },
};

/* Number of arguments of a simple command, -1 for other commands. */
static int arity(const char *cmd)
{
    for (size_t i = 0; i < sizeof simple_commands / sizeof simple_commands[0]; i++)
        if (strcmp(cmd, simple_commands[i].name) == 0)
            return simple_commands[i].args;
    return -1;
}

/* Runs one client call; NOT_SIMPLE for the other commands. */
static int simple(const char *cmd, char **a, int left, p2pm_transfer *guard)
{
    int k = arity(cmd);
    if (k < 0)
        return NOT_SIMPLE;
    if (left < k) {
        fprintf(stderr, "e2e_driver: %s needs %d argument(s)\n", cmd, k);
        exit(2);
    }
    if (strcmp(cmd, "import") == 0)
        return p2pm_record_image_import(client, a[0], atoi(a[1]), strtoull(a[2], NULL, 10));
    if (strcmp(cmd, "download") == 0)
        return p2pm_record_image_download(client, a[0], atoi(a[1]), strtod(a[2], NULL));
    if (strcmp(cmd, "chunk") == 0)
        return p2pm_record_chunk_transfer(client, strtoull(a[0], NULL, 10), atoi(a[1]));
    if (strcmp(cmd, "chunkh") == 0)
        return p2pm_record_chunk_transfer_hash(client, strtoull(a[0], NULL, 10), atoi(a[1]), a[2]);
    if (strcmp(cmd, "request") == 0)
        return p2pm_record_chunk_request(client, a[0]);
    if (strcmp(cmd, "verify") == 0)
        return p2pm_record_verification(client, atoi(a[0]), a[1]);
    if (strcmp(cmd, "cache") == 0)
        return p2pm_record_cache_access(client, atoi(a[0]), a[1]);
    if (strcmp(cmd, "tstart") == 0) {
        *guard = p2pm_transfer_start(client);
        return guard->err;
    }
    if (strcmp(cmd, "tend") == 0)
        return p2pm_transfer_end(guard);
    if (strcmp(cmd, "u64") == 0)
        return p2pm_counter_add_u64(client, a[0], strtoull(a[1], NULL, 10), NULL, 0);
    if (strcmp(cmd, "batch_begin") == 0)
        return p2pm_batch_begin(client);
    if (strcmp(cmd, "batch_end") == 0)
        return p2pm_batch_end(client);
    if (strcmp(cmd, "flush") == 0)
        return p2pm_flush(client);
    p2pm_label l[16];
    char labels[1024];
    snprintf(labels, sizeof labels, "%s", a[2]);   /* parsed in place: keep argv for retries */
    size_t n = parse_labels(labels, l);
    double v = strtod(a[1], NULL);
    if (strcmp(cmd, "counter") == 0)
        return p2pm_counter_add(client, a[0], v, l, n);
    if (strcmp(cmd, "observe") == 0)
        return p2pm_histogram_observe(client, a[0], v, l, n);
    if (strcmp(cmd, "gauge_set") == 0)
        return p2pm_gauge_set(client, a[0], v, l, n);
    return p2pm_gauge_add(client, a[0], v, l, n);
}

int main(int argc, char **argv)
{
    static p2pm_transfer guard;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: e2e_driver SOCKET COMMAND [ARGS]...\n");
        return 2;
    }
    if (strcmp(argv[1], "-") != 0 && !(client = p2pm_open(argv[1]))) {
        perror("p2pm_open");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *cmd = argv[i];
        char **a = argv + i + 1;
        int left = argc - i - 1;
#define ARGS(k)                                                                   \
    do {                                                                          \
        if (left < (k)) {                                                         \
            fprintf(stderr, "e2e_driver: %s needs %d argument(s)\n", cmd, (k));   \
            return 2;                                                             \
        }                                                                         \
        i += (k);                                                                 \
    } while (0)
        int rc = 0;
        for (int attempt = 0; attempt < 5000; attempt++) {   /* retry dropped datagrams */
            p2pm_transfer saved = guard;
            rc = simple(cmd, a, left, &guard);
            if (rc != -EAGAIN || strcmp(cmd, "batch_end") == 0 || strcmp(cmd, "flush") == 0 ||
                strcmp(cmd, "tstart") == 0 || strcmp(cmd, "tend") == 0)
                break;   /* a batch dropped at its end is gone; a transfer's +-1 is kept by
                            the client, and its duration must not be recorded twice */
            guard = saved;
            sleep_us(1000);
        }
        if (rc != NOT_SIMPLE) {
            if (rc == -EAGAIN && (strcmp(cmd, "tstart") == 0 || strcmp(cmd, "tend") == 0))
                rc = 0;   /* dropped but kept: delivered later */
            need(rc, cmd);
            i += arity(cmd);
            continue;
        }
        if (strcmp(cmd, "threads") == 0) {
            ARGS(3);
            threads(atoi(a[0]), atoi(a[1]), a[2]);
        } else if (strcmp(cmd, "flood") == 0) {
            ARGS(2);
            int n = atoi(a[0]), sent = 0, first_error = 0;
            for (int k = 0; k < n; k++) {
                int rc = p2pm_counter_add(client, a[1], 1, NULL, 0);
                sent += rc == 0;
                if (rc != 0 && first_error == 0)
                    first_error = rc;
            }
            printf("flood sent=%d dropped=%d first_error=%d\n", sent, n - sent, first_error);
        } else if (strcmp(cmd, "final") == 0) {
            ARGS(1);
            int attempts = 1;
            while (p2pm_counter_add(client, a[0], 1, NULL, 0) != 0) {
                if (++attempts > 2000) {
                    fprintf(stderr, "e2e_driver: final: never sent\n");
                    return 2;
                }
                sleep_us(10000);
            }
            printf("final attempts=%d\n", attempts);
        } else if (strcmp(cmd, "wait") == 0) {
            char line[64];
            printf("waiting\n");
            if (!fgets(line, sizeof line, stdin))
                return 2;
        } else if (strcmp(cmd, "mode") == 0) {
            ARGS(2);
            p2pm_mode m = strcmp(a[0], "immediate") == 0 ? P2PM_IMMEDIATE
                          : strcmp(a[0], "blocking") == 0 ? P2PM_BLOCKING : P2PM_BUFFERED;
            need(p2pm_set_mode(client, m, atoi(a[1])), cmd);
        } else if (strcmp(cmd, "seed") == 0) {
            ARGS(1);
            seed(atoi(a[0]));
        } else if (strcmp(cmd, "fullstats") == 0) {
            p2pm_stats st;
            need(p2pm_get_stats(client, &st), cmd);
            printf("fullstats sent_datagrams=%llu sent_samples=%llu dropped_datagrams=%llu "
                   "dropped_samples=%llu kept_samples=%llu resent_adds=%llu waits=%llu\n",
                   (unsigned long long)st.sent_datagrams, (unsigned long long)st.sent_samples,
                   (unsigned long long)st.dropped_datagrams,
                   (unsigned long long)st.dropped_samples, (unsigned long long)st.kept_samples,
                   (unsigned long long)st.resent_adds, (unsigned long long)st.waits);
        } else if (strcmp(cmd, "stats") == 0) {
            printf("dropped=%llu\n", (unsigned long long)p2pm_dropped(client));
        } else {
            fprintf(stderr, "e2e_driver: unknown command %s\n", cmd);
            return 2;
        }
    }
    p2pm_close(client);
    return 0;
}
