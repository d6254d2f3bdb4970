/* The fixed workload of the p2pmetricsd load tools: the seed's 13 P2P metrics x their label sets
 * x 200 peers (5,200 series), pre-encoded in wire protocol v1 (Clients/PROTOCOL.md).
 *
 *   single  one sample per datagram: magic, one series record, one sample (~45-75 bytes)
 *   batch   datagrams of at most `batch_bytes` (8 KiB) holding samples of a working set of
 *           `per_datagram` series; each series record is written once per datagram and
 *           referenced by every later sample of it (PROTOCOL.md 1.2), as the clients' batch mode does
 *   fill    `fill_series` distinct counter series bench.fill.total{shard,item}, one sample each,
 *           packed into 8 KiB datagrams (for the 1M-series scenarios)
 *   text    the same 5,200 series as DogStatsD text lines (counters `|c`, gauges `+1|g`/`-1|g`,
 *           timers `|ms`, tags `#label:value,peer:peer-NNN`), `lines` lines per datagram
 *
 * Everything is deterministic (fixed LCG seed), so the floor receiver and the daemon get
 * byte-identical traffic. */
#ifndef P2PM_BENCH_WORKLOAD_H
#define P2PM_BENCH_WORKLOAD_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WL_PEERS 200

typedef struct {
    const char *name;
    char kind;              /* 'c' counter add, 'g' gauge add, 'h' histogram observe */
    const char *label;      /* the metric's own label, or NULL */
    const char *values[4];
    int n_values;
    uint64_t counter_value; /* value of a counter add */
} wl_metric;

static const wl_metric WL_METRICS[13] = {
    {"p2p.image.imports.total", 'c', "artifact_type", {"microvm", "container", "storepath", "closure"}, 4, 1},
    {"p2p.image.imports.failed", 'c', "artifact_type", {"microvm", "container", "storepath", "closure"}, 4, 1},
    {"p2p.image.downloads.total", 'c', NULL, {0}, 0, 1},
    {"p2p.image.downloads.failed", 'c', NULL, {0}, 0, 1},
    {"p2p.transfer.duration", 'h', NULL, {0}, 0, 0},
    {"p2p.bytes_transferred.total", 'c', "artifact_type", {"microvm", "container", "storepath", "closure"}, 4, 262144},
    {"p2p.chunks_transferred.total", 'c', NULL, {0}, 0, 1},
    {"p2p.chunks_deduplicated.total", 'c', NULL, {0}, 0, 1},
    {"p2p.verification.success", 'c', "verification_type", {"nar_hash", "chunk_hash"}, 2, 1},
    {"p2p.verification.failed", 'c', "verification_type", {"nar_hash", "chunk_hash"}, 2, 1},
    {"p2p.cache.hits", 'c', "cache_type", {"chunk", "vm_image"}, 2, 1},
    {"p2p.cache.misses", 'c', "cache_type", {"chunk", "vm_image"}, 2, 1},
    {"p2p.transfers.active", 'g', NULL, {0}, 0, 0},
};

typedef struct {
    unsigned char rec[160]; /* series record without its 0x01 tag: name, label count, labels */
    size_t rec_len;
    char kind;
    uint64_t counter_value;
} wl_series;

typedef struct {
    unsigned char *bytes;
    size_t len;
    uint32_t samples;
} wl_datagram;

typedef struct {
    wl_series *series;
    size_t n_series;
    wl_datagram *pool;
    size_t n_pool;
    unsigned char *arena;
    uint64_t pool_samples; /* samples in the whole pool */
    uint64_t pool_bytes;
} wl_workload;

static inline unsigned char *wl_uvarint(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) { *p++ = (unsigned char)(v | 0x80); v >>= 7; }
    *p++ = (unsigned char)v;
    return p;
}

static inline unsigned char *wl_string(unsigned char *p, const char *s)
{
    size_t n = strlen(s);
    p = wl_uvarint(p, n);
    memcpy(p, s, n);
    return p + n;
}

static inline uint64_t wl_rand(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return *state >> 33;
}

/* The 5,200 series of the seed mix: every metric x its own label's values x peer-000..peer-199. */
static inline size_t wl_make_series(wl_series **out)
{
    size_t n = 0;
    for (int m = 0; m < 13; m++) n += (size_t)(WL_METRICS[m].n_values ? WL_METRICS[m].n_values : 1) * WL_PEERS;
    wl_series *s = calloc(n, sizeof *s);
    size_t k = 0;
    for (int peer = 0; peer < WL_PEERS; peer++) {
        char peer_name[16];
        snprintf(peer_name, sizeof peer_name, "peer-%03d", peer);
        for (int m = 0; m < 13; m++) {
            const wl_metric *metric = &WL_METRICS[m];
            int nv = metric->n_values ? metric->n_values : 1;
            for (int v = 0; v < nv; v++) {
                unsigned char *p = s[k].rec;
                p = wl_string(p, metric->name);
                p = wl_uvarint(p, metric->label ? 2 : 1);
                if (metric->label) { p = wl_string(p, metric->label); p = wl_string(p, metric->values[v]); }
                p = wl_string(p, "peer");
                p = wl_string(p, peer_name);
                s[k].rec_len = (size_t)(p - s[k].rec);
                s[k].kind = metric->kind;
                s[k].counter_value = metric->counter_value;
                k++;
            }
        }
    }
    *out = s;
    return n;
}

static const double WL_DURATIONS[8] = {0.004, 0.03, 0.12, 0.7, 1.9, 4.2, 45.5, 250.25};

/* Appends one sample of series index `index` (in the datagram's table) for series `s`; the
 * `variant` picks the value (gauge +1/-1 alternating, histogram durations). */
static inline unsigned char *wl_sample(unsigned char *p, const wl_series *s, uint64_t index, uint64_t variant)
{
    switch (s->kind) {
    case 'c':
        *p++ = 0x10;
        p = wl_uvarint(p, index);
        return wl_uvarint(p, s->counter_value);
    case 'g':
        *p++ = 0x31;                       /* gauge add, svarint */
        p = wl_uvarint(p, index);
        return wl_uvarint(p, (variant & 1) ? 1 : 2); /* zigzag: -1 or +1 */
    default: {
        double d = WL_DURATIONS[variant & 7];
        uint64_t bits;
        memcpy(&bits, &d, 8);
        *p++ = 0x42;                       /* histogram observe, f64 */
        p = wl_uvarint(p, index);
        for (int i = 0; i < 8; i++) *p++ = (unsigned char)(bits >> (8 * i));
        return p;
    }
    }
}

static inline size_t wl_sample_max(const wl_series *s) { return s->kind == 'h' ? 14 : 16; }

/* single: two datagrams per series (so gauges go +1 then -1), interleaved series by series. */
static inline void wl_build_single(wl_workload *w)
{
    w->n_series = wl_make_series(&w->series);
    w->n_pool = 2 * w->n_series;
    w->pool = calloc(w->n_pool, sizeof *w->pool);
    w->arena = malloc(w->n_pool * 200);
    unsigned char *p = w->arena;
    uint64_t state = 42;
    for (size_t j = 0; j < w->n_pool; j++) {
        /* a shuffled but fixed order, so consecutive datagrams hit different series */
        size_t si = (size_t)(wl_rand(&state) % w->n_series);
        const wl_series *s = &w->series[si];
        unsigned char *start = p;
        *p++ = 0xF5;
        *p++ = 0x01;
        memcpy(p, s->rec, s->rec_len);
        p += s->rec_len;
        p = wl_sample(p, s, 0, j);
        w->pool[j].bytes = start;
        w->pool[j].len = (size_t)(p - start);
        w->pool[j].samples = 1;
        w->pool_samples += 1;
        w->pool_bytes += w->pool[j].len;
    }
}

/* batch: `n_pool` datagrams of at most batch_bytes, each with a working set of per_datagram
 * series (random, distinct), samples round-robin over the working set in random order. */
static inline void wl_build_batch(wl_workload *w, size_t n_pool, size_t batch_bytes, size_t per_datagram)
{
    w->n_series = wl_make_series(&w->series);
    if (per_datagram > w->n_series) per_datagram = w->n_series;
    w->n_pool = n_pool;
    w->pool = calloc(n_pool, sizeof *w->pool);
    w->arena = malloc(n_pool * batch_bytes);
    size_t *set = malloc(per_datagram * sizeof *set);
    long *index = malloc(w->n_series * sizeof *index);
    for (size_t i = 0; i < w->n_series; i++) index[i] = -1;
    uint64_t state = 7;
    for (size_t j = 0; j < n_pool; j++) {
        unsigned char *start = w->arena + j * batch_bytes, *p = start, *end = start + batch_bytes;
        for (size_t k = 0; k < per_datagram; k++) {
            size_t si;
            int dup;
            do {
                si = (size_t)(wl_rand(&state) % w->n_series);
                dup = 0;
                for (size_t q = 0; q < k; q++) dup |= set[q] == si;
            } while (dup);
            set[k] = si;
        }
        long next_index = 0;
        uint32_t samples = 0;
        *p++ = 0xF5;
        for (uint64_t variant = 0;; variant++) {
            size_t si = set[wl_rand(&state) % per_datagram];
            const wl_series *s = &w->series[si];
            size_t need = wl_sample_max(s) + (index[si] < 0 ? 1 + s->rec_len : 0);
            if ((size_t)(end - p) < need) break;
            if (index[si] < 0) {
                *p++ = 0x01;
                memcpy(p, s->rec, s->rec_len);
                p += s->rec_len;
                index[si] = next_index++;
            }
            p = wl_sample(p, s, (uint64_t)index[si], variant);
            samples++;
        }
        for (size_t k = 0; k < per_datagram; k++) index[set[k]] = -1;
        w->pool[j].bytes = start;
        w->pool[j].len = (size_t)(p - start);
        w->pool[j].samples = samples;
        w->pool_samples += samples;
        w->pool_bytes += w->pool[j].len;
    }
    free(set);
    free(index);
}

/* fill: n distinct counter series bench.fill.total{shard="sNNNN",item="iNNNN"}, +1 each,
 * packed into datagrams of at most batch_bytes. */
static inline void wl_build_fill(wl_workload *w, size_t n, size_t batch_bytes)
{
    size_t per = batch_bytes / 48 + 1; /* rough upper bound of series per datagram */
    w->n_pool = n / (per / 2) + 2;
    w->pool = calloc(w->n_pool, sizeof *w->pool);
    w->arena = malloc(w->n_pool * batch_bytes);
    size_t j = 0, i = 0;
    while (i < n) {
        unsigned char *start = w->arena + j * batch_bytes, *p = start, *end = start + batch_bytes;
        uint32_t samples = 0;
        *p++ = 0xF5;
        while (i < n && (size_t)(end - p) >= 64) {
            char shard[24], item[24];
            snprintf(shard, sizeof shard, "s%04zu", i / 1000);
            snprintf(item, sizeof item, "i%04zu", i % 1000);
            *p++ = 0x01;
            p = wl_string(p, "bench.fill.total");
            p = wl_uvarint(p, 2);
            p = wl_string(p, "shard");
            p = wl_string(p, shard);
            p = wl_string(p, "item");
            p = wl_string(p, item);
            *p++ = 0x10;
            p = wl_uvarint(p, samples);
            *p++ = 0x01;
            samples++;
            i++;
        }
        w->pool[j].bytes = start;
        w->pool[j].len = (size_t)(p - start);
        w->pool[j].samples = samples;
        w->pool_samples += samples;
        w->pool_bytes += w->pool[j].len;
        j++;
    }
    w->n_pool = j;
}

/* text: the seed mix as DogStatsD lines, `lines` per datagram (newline-separated), series in a
 * shuffled but fixed order; gauges alternate +1/-1, timers cycle through WL_DURATIONS (in ms).
 * One line is one sample, so the daemon's applied samples must equal the lines sent. */
static inline size_t wl_text_line(char *out, size_t room, const wl_metric *m, int v, int peer, uint64_t variant)
{
    char value[32];
    const char *type = "c";
    switch (m->kind) {
    case 'c': snprintf(value, sizeof value, "%llu", (unsigned long long)m->counter_value); break;
    case 'g': snprintf(value, sizeof value, "%s", (variant & 1) ? "-1" : "+1"); type = "g"; break;
    default: snprintf(value, sizeof value, "%g", WL_DURATIONS[variant & 7] * 1000); type = "ms"; break;
    }
    int n;
    if (m->label)
        n = snprintf(out, room, "%s:%s|%s|#%s:%s,peer:peer-%03d", m->name, value, type, m->label, m->values[v], peer);
    else
        n = snprintf(out, room, "%s:%s|%s|#peer:peer-%03d", m->name, value, type, peer);
    return n < 0 || (size_t)n >= room ? 0 : (size_t)n;
}

static inline void wl_build_text(wl_workload *w, size_t lines, size_t n_pool)
{
    /* the series are (metric, value, peer) triples, as wl_make_series orders them */
    size_t n_series = 0;
    for (int m = 0; m < 13; m++) n_series += (size_t)(WL_METRICS[m].n_values ? WL_METRICS[m].n_values : 1) * WL_PEERS;
    w->n_series = n_series;
    w->n_pool = n_pool;
    w->pool = calloc(n_pool, sizeof *w->pool);
    size_t per = lines * 96;
    w->arena = malloc(n_pool * per);
    uint64_t state = 42;
    uint64_t variant = 0;
    for (size_t j = 0; j < n_pool; j++) {
        char *start = (char *)w->arena + j * per, *p = start;
        for (size_t l = 0; l < lines; l++) {
            size_t si = (size_t)(wl_rand(&state) % n_series);
            int peer = (int)(si / (n_series / WL_PEERS));
            size_t k = si % (n_series / WL_PEERS);
            int m = 0, v = 0;
            for (m = 0; m < 13; m++) {
                size_t nv = (size_t)(WL_METRICS[m].n_values ? WL_METRICS[m].n_values : 1);
                if (k < nv) { v = (int)k; break; }
                k -= nv;
            }
            if (l > 0) *p++ = '\n';
            size_t n = wl_text_line(p, per - (size_t)(p - start), &WL_METRICS[m], v, peer, variant++);
            if (n == 0) { fprintf(stderr, "wl_build_text: line too long\n"); exit(2); }
            p += n;
        }
        w->pool[j].bytes = (unsigned char *)start;
        w->pool[j].len = (size_t)(p - start);
        w->pool[j].samples = (uint32_t)lines;
        w->pool_samples += lines;
        w->pool_bytes += w->pool[j].len;
    }
}

#endif
