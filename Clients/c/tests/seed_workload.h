/*
 * seed_workload.h - the seed-shaped workload: one client call per event, as the seed's system
 * calls its metrics functions, split over threads. Shared by the e2e driver (the delivery test,
 * Tests/integration/test_delivery.py, which computes the same exact totals) and the delivery
 * benchmark (Benchmarks/load/client-delivery.c).
 *
 * Events (event i goes to thread i % threads):
 *   200 imports      artifact_type TYPES[i % 4], failed when i % 10 == 9, size (i + 1) MiB
 *   500 downloads    failed when i % 25 == 24, duration (i % 8) / 4 s; then a nar_hash
 *                    verification (failed when i % 50 == 49) and a vm_image cache access (hit
 *                    when i % 2 == 0)
 *   5,000 chunks     deduplicated when i % 3 == 0, 65,536 bytes; then a chunk_hash verification
 *                    (failed when i % 100 == 99) and a chunk cache access (hit when deduplicated)
 *   20 transfers     started before the thread's other events, ended after them
 */
#ifndef P2PM_SEED_WORKLOAD_H
#define P2PM_SEED_WORKLOAD_H

#include <stdint.h>
#include <time.h>

#include "p2pmetrics.h"

enum { SEED_IMPORTS = 200, SEED_DOWNLOADS = 500, SEED_CHUNKS = 5000, SEED_TRANSFERS = 20 };
/* calls per run: every event above, plus a start and an end per transfer */
enum { SEED_CALLS = SEED_IMPORTS + 3 * SEED_DOWNLOADS + 3 * SEED_CHUNKS + 2 * SEED_TRANSFERS };

static const char *const SEED_TYPES[4] = { "microvm", "container", "storepath", "closure" };

/* A call's latency sink: called after every call with its duration in ns (may be NULL). */
typedef void (*seed_latency_fn)(void *ctx, uint64_t ns);

static inline uint64_t seed_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

#define SEED_CALL(expr)                                                      \
    do {                                                                     \
        uint64_t t0_ = seed_now_ns();                                        \
        int rc_ = (expr);                                                    \
        if (lat)                                                             \
            lat(ctx, seed_now_ns() - t0_);                                   \
        if (rc_ != 0)                                                        \
            (*failures)++;                                                   \
    } while (0)

/* Runs thread `t` of `threads`' share of the workload on client c; counts failed calls. */
static inline void seed_run(p2pm_client *c, int t, int threads, seed_latency_fn lat, void *ctx,
                            long *failures)
{
    p2pm_transfer guards[SEED_TRANSFERS];
    int n_guards = 0;
    for (int i = t; i < SEED_TRANSFERS; i += threads) {
        uint64_t t0 = seed_now_ns();
        guards[n_guards++] = p2pm_transfer_start(c);
        if (lat)
            lat(ctx, seed_now_ns() - t0);
    }
    for (int i = t; i < SEED_IMPORTS; i += threads)
        SEED_CALL(p2pm_record_image_import(c, SEED_TYPES[i % 4], i % 10 != 9,
                                           (uint64_t)(i + 1) << 20));
    for (int i = t; i < SEED_DOWNLOADS; i += threads) {
        SEED_CALL(p2pm_record_image_download(c, "img", i % 25 != 24, (i % 8) / 4.0));
        SEED_CALL(p2pm_record_verification(c, i % 50 != 49, "nar_hash"));
        SEED_CALL(p2pm_record_cache_access(c, i % 2 == 0, "vm_image"));
    }
    for (int i = t; i < SEED_CHUNKS; i += threads) {
        bool dedup = i % 3 == 0;
        SEED_CALL(p2pm_record_chunk_transfer(c, 65536, dedup));
        SEED_CALL(p2pm_record_verification(c, i % 100 != 99, "chunk_hash"));
        SEED_CALL(p2pm_record_cache_access(c, dedup, "chunk"));
    }
    for (int k = 0; k < n_guards; k++)
        SEED_CALL(p2pm_transfer_end(&guards[k]));
}

#endif /* P2PM_SEED_WORKLOAD_H */
