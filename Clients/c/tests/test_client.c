/*
 * test_client.c - behaviour of the C client against a receiver socket bound here: validation,
 * datagram size limits, batching, series reuse, drops and their in-band report, reconnection,
 * threads, the default client, caller-provided memory and the transfer guard.
 */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <sys/wait.h>

static unsigned char buf[65536];

/* Receives every queued datagram and counts its samples and reported drops (any number of
 * datagrams); returns how many datagrams there were. */
static int collect_count(struct receiver *r, uint64_t *samples, uint64_t *dropped, int timeout_ms)
{
    static struct decoded d;
    int n = 0;
    ssize_t len;
    while ((len = receiver_recv(r, buf, sizeof buf, n ? 0 : timeout_ms)) > 0) {
        decoded_reset(&d);
        CHECK_EQ_INT(decode(buf, (size_t)len, &d), 0);
        *samples += d.n;
        *dropped += d.dropped;
        n++;
    }
    return n;
}

/* Receives every queued datagram and decodes it into d; returns how many there were. */
static int collect(struct receiver *r, struct decoded *d, int timeout_ms)
{
    int n = 0;
    ssize_t len;
    while ((len = receiver_recv(r, buf, sizeof buf, n ? 0 : timeout_ms)) > 0) {
        CHECK(len <= P2PM_MAX_DATAGRAM);
        CHECK_EQ_INT(decode(buf, (size_t)len, d), 0);
        n++;
    }
    return n;
}

/* Opens a client on r in P2PM_IMMEDIATE mode: one datagram per call, drops at once. */
static p2pm_client *open_immediate(struct receiver *r)
{
    p2pm_client *c = p2pm_open(r->path);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(p2pm_set_mode(c, P2PM_IMMEDIATE, 0), 0);
    return c;
}

static void test_validation(void)
{
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = open_immediate(&r);
    char long_name[202], long_value[1026], long_label[102];
    memset(long_name, 'n', 201), long_name[201] = 0;
    memset(long_value, 'v', 1025), long_value[1025] = 0;
    memset(long_label, 'l', 101), long_label[101] = 0;
    p2pm_label ok = { "a", "1" }, dup[2] = { { "a", "1" }, { "a", "2" } };
    p2pm_label bad_utf8 = { "a", "\xc3\x28" }, overlong = { "a", "\xc0\xaf" };
    p2pm_label surrogate = { "a", "\xed\xa0\x80" }, le = { "le", "1" }, dunder = { "__x", "1" };
    p2pm_label dash = { "a-b", "1" }, digit = { "1a", "1" }, empty = { "", "1" };
    p2pm_label null_value = { "a", NULL }, null_name = { NULL, "1" };
    p2pm_label too_long_value = { "a", long_value }, too_long_label = { long_label, "1" };
    p2pm_label many[17];
    char names[17][16];
    for (int i = 0; i < 17; i++) {
        snprintf(names[i], sizeof names[i], "l%d", i);
        many[i] = (p2pm_label){ names[i], "v" };
    }

    CHECK_EQ_INT(p2pm_counter_add(c, "", 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, NULL, 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "1abc", 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "p2p-x", 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, long_name, 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "p2pmetricsd.series", 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "p2pmetricsd_series", 1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, NULL, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, dup, 2), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &bad_utf8, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &overlong, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &surrogate, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &dunder, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &dash, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &digit, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &empty, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &null_value, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &null_name, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &too_long_value, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, &too_long_label, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, many, 17), -EINVAL);
    CHECK_EQ_INT(p2pm_histogram_observe(c, "h", 1, &le, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", -1, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", -0.5, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", NAN, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", INFINITY, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_gauge_add(c, "g", NAN, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_gauge_add(c, "g", -INFINITY, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_histogram_observe(c, "h", -INFINITY, NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_record_cache_access(c, true, NULL), -EINVAL);
    CHECK_EQ_INT(p2pm_record_image_download(c, NULL, true, NAN), -EINVAL);
    CHECK_EQ_INT(p2pm_batch_end(c), -EINVAL);   /* no batch to end */
    CHECK_EQ_INT(receiver_drain(&r), 0);        /* nothing reached the socket */
    CHECK_EQ_INT(p2pm_dropped(c), 0);

    /* Valid edge cases are accepted. */
    CHECK_EQ_INT(p2pm_counter_add(c, long_name + 1, 0, many, 16), 0);   /* 200 bytes, 16 labels */
    CHECK_EQ_INT(p2pm_counter_add(c, ":a_b.c:9", -0.0, &ok, 1), 0);
    CHECK_EQ_INT(p2pm_counter_add(c, "p2pmetricsdx", 1, NULL, 0), 0);
    CHECK_EQ_INT(p2pm_histogram_observe(c, "h", -2.5, NULL, 0), 0);
    CHECK_EQ_INT(p2pm_gauge_set(c, "g", NAN, &le, 1), 0);   /* "le" is reserved on histograms */
    CHECK_EQ_INT(receiver_drain(&r), 5);
    CHECK_EQ_INT(p2pm_counter_add_u64(c, "u", UINT64_MAX, NULL, 0), 0);
    ssize_t n = receiver_recv(&r, buf, sizeof buf, 1000);
    char hex[64];
    to_hex(buf, (size_t)n, hex);   /* u64 max as uvarint: ff*9 01 */
    CHECK(strcmp(hex, "f5010175001000ffffffffffffffffff01") == 0);
    p2pm_close(c);
    receiver_close(&r);
}

static void test_sizes_and_batches(void)
{
    static struct decoded d;
    static char big[8][1025];
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    p2pm_label labels[8];
    for (int i = 0; i < 8; i++) {
        memset(big[i], 'a' + i, 1024), big[i][1024] = 0;
        labels[i] = (p2pm_label){ (const char *[]){ "a", "b", "c", "d", "e", "f", "g", "h" }[i],
                                  big[i] };
    }
    /* 8 labels of 1 KiB cannot fit in 8192 bytes; 7 can. */
    CHECK_EQ_INT(p2pm_counter_add(c, "wide", 1, labels, 8), -EMSGSIZE);
    CHECK_EQ_INT(p2pm_counter_add(c, "wide", 1, labels, 7), 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    CHECK_EQ_INT(d.n, 1);

    /* A batch of 1000 distinct series overflows into several full datagrams, in call order; a
     * batch full of one reused series costs 3 bytes per sample. 100 distinct series then the
     * same 100 again: the 64-entry table overflows and the encoding stays valid. */
    char name[32];
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);   /* nesting */
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "series.number_%d", i);
        p2pm_label l = { "index", name + 14 };
        CHECK_EQ_INT(p2pm_counter_add(c, name, i, &l, 1), 0);
    }
    CHECK_EQ_INT(p2pm_batch_end(c), 0);     /* still in the outer batch */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 100; i++) {
            snprintf(name, sizeof name, "g%d", i);
            CHECK_EQ_INT(p2pm_gauge_add(c, name, round ? -1 : 0.5, NULL, 0), 0);
        }
    for (int i = 0; i < 2000; i++)
        CHECK_EQ_INT(p2pm_counter_add(c, "same", 1, NULL, 0), 0);
    CHECK_EQ_INT(p2pm_batch_end(c), 0);
    decoded_reset(&d);
    int datagrams = collect(&r, &d, 1000);
    CHECK(datagrams >= 5);
    CHECK_EQ_INT(d.n, 1000 + 200 + 2000);
    for (int i = 0; i < 1000 && i < (int)d.n; i++) {
        char want[64];
        snprintf(want, sizeof want, "series.number_%d{index=%d}", i, i);
        CHECK(strcmp(d.s[i].key, want) == 0 && d.s[i].v == i && d.s[i].kind == 1);
    }
    double g_sum = 0, same = 0;
    for (size_t i = 1000; i < d.n; i++) {
        if (d.s[i].kind == 3 && d.s[i].key[0] == 'g')
            g_sum += d.s[i].v;
        if (strcmp(d.s[i].key, "same") == 0 && d.s[i].kind == 1)
            same += d.s[i].v;
    }
    CHECK(g_sum == -50 && same == 2000);

    /* A helper's samples are never split between datagrams: fill a batch almost to the end,
     * then record failed downloads whose 3 samples do not fit after it. */
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    /* 7 + 2672 * 3 bytes of "same", leaving 157 of the 8180 bytes of room for records: the
     * first download takes 97 bytes, the next ones 16 (series reused), so 4 fit and the 5th
     * would be split after its first two samples if helpers were not atomic. */
    for (int i = 0; i < 2672; i++)
        CHECK_EQ_INT(p2pm_counter_add(c, "same", 1, NULL, 0), 0);
    for (int i = 0; i < 50; i++)
        CHECK_EQ_INT(p2pm_record_image_download(c, "img", false, 0.5), 0);
    CHECK_EQ_INT(p2pm_batch_end(c), 0);
    CHECK_EQ_INT(p2pm_flush(c), 0);         /* nothing pending: a no-op */
    for (int k = 0; k < 2; k++) {
        ssize_t n = receiver_recv(&r, buf, sizeof buf, 1000);
        REQUIRE(n > 0);
        decoded_reset(&d);
        CHECK_EQ_INT(decode(buf, (size_t)n, &d), 0);
        int total = 0, failed = 0, duration = 0;
        for (size_t i = 0; i < d.n; i++) {
            total += strcmp(d.s[i].key, "p2p.image.downloads.total") == 0;
            failed += strcmp(d.s[i].key, "p2p.image.downloads.failed") == 0;
            duration += strcmp(d.s[i].key, "p2p.transfer.duration") == 0;
        }
        CHECK_EQ_INT(total, k ? 46 : 4);
        CHECK_EQ_INT(failed, total);
        CHECK_EQ_INT(duration, total);
    }
    CHECK_EQ_INT(receiver_drain(&r), 0);
    CHECK_EQ_INT(p2pm_dropped(c), 0);
    p2pm_close(c);
    receiver_close(&r);
}

/* The receiver stops reading: calls return -EAGAIN without blocking, the drop count is exact and
 * travels in the next datagram that gets through. */
static void test_drops(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = open_immediate(&r);
    int sent = 0, dropped = 0;
    for (int i = 0; i < 1000; i++) {
        int rc = p2pm_record_chunk_transfer(c, 4096, false);
        if (rc == 0)
            sent++;
        else if (rc == -EAGAIN)
            dropped++;
        else
            CHECK_EQ_INT(rc, 0);
    }
    CHECK(sent >= 1 && dropped >= 1 && sent + dropped == 1000);
    CHECK_EQ_INT(p2pm_dropped(c), dropped);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), sent);
    CHECK_EQ_INT(d.dropped, 0);
    CHECK_EQ_INT(p2pm_record_cache_access(c, true, "chunk"), 0);
    ssize_t n = receiver_recv(&r, buf, sizeof buf, 1000);
    decoded_reset(&d);
    CHECK_EQ_INT(decode(buf, (size_t)n, &d), 0);
    CHECK(d.has_dropped_first && d.n == 1);
    CHECK_EQ_INT(d.dropped, dropped);
    dropped = 0;   /* reported */

    /* Batch mode: a flush that fails drops the whole batch as one datagram. */
    int refill = 0;   /* fill the queue again; the send that finds it full is dropped */
    while (p2pm_counter_add(c, "fill", 1, NULL, 0) == 0)
        refill++;
    dropped++;
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    CHECK_EQ_INT(p2pm_record_image_import(c, "closure", true, 5), 0);
    CHECK_EQ_INT(p2pm_batch_end(c), -EAGAIN);
    dropped++;
    /* A full batch sent implicitly is dropped too; the calls still return 0 (their own samples
     * were buffered), the drop is counted. */
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    for (int i = 0; i < 3000; i++)
        CHECK_EQ_INT(p2pm_counter_add(c, "same", 1, NULL, 0), 0);
    dropped++;
    CHECK_EQ_INT(p2pm_dropped(c), (uint64_t)(dropped + 1000 - sent));
    CHECK_EQ_INT(p2pm_batch_end(c), -EAGAIN);
    dropped++;
    CHECK_EQ_INT(p2pm_dropped(c), (uint64_t)(dropped + 1000 - sent));
    CHECK_EQ_INT(receiver_drain(&r), refill);

    /* The next datagram starts with the dropped record; the one after has none. */
    CHECK_EQ_INT(p2pm_record_verification(c, true, "nar_hash"), 0);
    n = receiver_recv(&r, buf, sizeof buf, 1000);
    REQUIRE(n > 3);
    decoded_reset(&d);
    CHECK_EQ_INT(decode(buf, (size_t)n, &d), 0);
    CHECK(buf[1] == 0x02 && d.has_dropped_first);
    CHECK_EQ_INT(d.dropped, dropped);
    CHECK(d.n == 1 &&
          strcmp(d.s[0].key, "p2p.verification.success{verification_type=nar_hash}") == 0);
    CHECK_EQ_INT(p2pm_record_verification(c, false, "chunk_hash"), 0);
    n = receiver_recv(&r, buf, sizeof buf, 1000);
    REQUIRE(n > 3);
    CHECK(buf[1] == 0x01);
    CHECK_EQ_INT(p2pm_dropped(c), (uint64_t)(dropped + 1000 - sent));   /* the total stays */
    p2pm_close(c);
    receiver_close(&r);
}

/* No sidecar at first (ENOENT), then it appears; then it restarts (a new socket at the path). */
static void test_absent_and_reconnect(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 0);
    p2pm_client *c = open_immediate(&r);      /* an absent sidecar is not an open error */
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, NULL, 0), -ENOENT);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, NULL, 0), -ENOENT);
    receiver_bind(&r);
    sleep_ms(P2PM_RECONNECT_MS + 20);
    CHECK_EQ_INT(p2pm_counter_add(c, "c", 1, NULL, 0), 0);
    CHECK_EQ_INT(p2pm_dropped(c), 2);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    CHECK(d.dropped == 2 && d.n == 1);

    /* The sidecar restarts: the old socket is gone, a new one is bound at the same path. */
    receiver_unbind(&r);
    receiver_bind(&r);
    sleep_ms(P2PM_RECONNECT_MS + 20);
    CHECK_EQ_INT(p2pm_gauge_set(c, "g", 3, NULL, 0), 0);   /* reconnects and resends at once */
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    CHECK(d.dropped == 0 && d.n == 1 && d.s[0].v == 3);

    /* It goes away: drops; the reconnect attempts are rate-limited, and it comes back. */
    receiver_unbind(&r);
    int errors = 0;
    for (int i = 0; i < 100; i++)
        errors += p2pm_counter_add(c, "c", 1, NULL, 0) < 0;
    CHECK_EQ_INT(errors, 100);
    CHECK_EQ_INT(p2pm_dropped(c), 102);
    receiver_bind(&r);
    int rc = -1;
    for (int i = 0; i < 100 && rc != 0; i++) {
        rc = p2pm_counter_add(c, "c", 1, NULL, 0);
        if (rc)
            sleep_ms(10);
    }
    CHECK_EQ_INT(rc, 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    CHECK_EQ_INT(d.dropped, p2pm_dropped(c) - 2);
    p2pm_close(c);
    receiver_close(&r);
}

/* ---- Threads ---- */

enum { THREADS = 8, CALLS = 20000 };

struct drainer {
    struct receiver *r;
    _Atomic int stop;
    long delay_us;     /* a slow sidecar: pause after each datagram */
    double per_thread[THREADS];
    uint64_t dropped_reported;
    uint64_t samples;
    int bad;
};

static void *drain_main(void *arg)
{
    struct drainer *dr = arg;
    static struct decoded d;
    static unsigned char dbuf[65536];
    for (;;) {
        ssize_t n = receiver_recv(dr->r, dbuf, sizeof dbuf, 50);
        if (n < 0) {
            if (dr->stop)
                return NULL;
            continue;
        }
        decoded_reset(&d);
        if (decode(dbuf, (size_t)n, &d) != 0)
            dr->bad++;
        if (dr->delay_us) {
            struct timespec ts = { 0, dr->delay_us * 1000 };
            nanosleep(&ts, NULL);
        }
        dr->samples += d.n;
        dr->dropped_reported += d.dropped;
        for (size_t i = 0; i < d.n; i++) {
            int t;
            if (sscanf(d.s[i].key, "thread.calls{thread=%d}", &t) == 1 && t >= 0 && t < THREADS)
                dr->per_thread[t] += d.s[i].v;
            else if (strcmp(d.s[i].key, "final") != 0)
                dr->bad++;
        }
    }
}

struct worker {
    p2pm_client *c;
    int id;
    int sent, dropped;
};

static void *work_main(void *arg)
{
    struct worker *w = arg;
    char id[16];
    snprintf(id, sizeof id, "%d", w->id);
    p2pm_label l = { "thread", id };
    for (int i = 0; i < CALLS; i++) {
        int rc = p2pm_counter_add(w->c, "thread.calls", 1, &l, 1);
        if (rc == 0) {
            w->sent++;
        } else {
            w->dropped++;
            struct timespec ts = { 0, 20000 };   /* let the drainer catch up */
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static void test_threads(void)
{
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = open_immediate(&r);
    struct drainer dr = { .r = &r };
    struct worker w[THREADS];
    pthread_t dt, wt[THREADS];
    REQUIRE(pthread_create(&dt, NULL, drain_main, &dr) == 0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){ c, i, 0, 0 };
        REQUIRE(pthread_create(&wt[i], NULL, work_main, &w[i]) == 0);
    }
    int sent = 0, dropped = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(wt[i], NULL);
        sent += w[i].sent;
        dropped += w[i].dropped;
    }
    /* one last datagram, retried until it gets through, carries the last drop report */
    int final_drops = 0;
    while (p2pm_counter_add(c, "final", 1, NULL, 0) != 0) {
        final_drops++;
        sleep_ms(1);
    }
    sleep_ms(100);
    dr.stop = 1;
    pthread_join(dt, NULL);
    double got = 0;
    for (int i = 0; i < THREADS; i++) {
        got += dr.per_thread[i];
        CHECK_EQ_INT(dr.per_thread[i], w[i].sent);
    }
    CHECK_EQ_INT(dr.bad, 0);
    CHECK_EQ_INT((long long)got, sent);
    CHECK_EQ_INT(sent + dropped, THREADS * CALLS);
    CHECK_EQ_INT(p2pm_dropped(c), dropped + (uint64_t)final_drops);
    CHECK_EQ_INT(dr.dropped_reported, p2pm_dropped(c));
    printf("threads: %d samples delivered, %llu datagrams dropped and reported\n", sent,
           (unsigned long long)p2pm_dropped(c));
    p2pm_close(c);
    receiver_close(&r);
}

/* ---- Default client, caller memory, open errors, the transfer guard ---- */

static void test_default_and_open(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 1);
    CHECK_EQ_INT(p2pm_dropped(NULL), 0);      /* not opened yet */
    REQUIRE(setenv(P2PM_SOCKET_ENV, r.path, 1) == 0);
    CHECK_EQ_INT(p2pm_set_mode(NULL, P2PM_IMMEDIATE, 0), 0);   /* opens the default client */
    CHECK_EQ_INT(p2pm_set_mode(NULL, 7, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_set_mode(NULL, P2PM_BLOCKING, -1), -EINVAL);
    CHECK_EQ_INT(p2pm_record_cache_access(NULL, false, "vm_image"), 0);
    CHECK_EQ_INT(p2pm_batch_begin(NULL), 0);
    CHECK_EQ_INT(p2pm_record_cache_access(NULL, true, "chunk"), 0);
    CHECK_EQ_INT(p2pm_record_cache_access(NULL, true, "chunk"), 0);
    CHECK_EQ_INT(p2pm_batch_end(NULL), 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 2);
    CHECK_EQ_INT(d.n, 3);
    CHECK(strcmp(d.s[0].key, "p2p.cache.misses{cache_type=vm_image}") == 0);
    CHECK(strcmp(d.s[2].key, "p2p.cache.hits{cache_type=chunk}") == 0);
    p2pm_close(NULL);                         /* a no-op */
    CHECK_EQ_INT(p2pm_flush(NULL), 0);

    /* caller-provided memory */
    static _Alignas(max_align_t) unsigned char mem[65536];
    REQUIRE(p2pm_client_size() <= sizeof mem);
    errno = 0;
    CHECK(p2pm_open_in(mem, p2pm_client_size() - 1, r.path) == NULL && errno == EINVAL);
    p2pm_client *c = p2pm_open_in(mem, sizeof mem, NULL);   /* $P2PM_SOCKET */
    REQUIRE(c == (p2pm_client *)mem);
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    CHECK_EQ_INT(p2pm_gauge_set(c, "g", 1.5, NULL, 0), 0);
    p2pm_close(c);                            /* flushes the pending batch */
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    CHECK(d.n == 1 && d.s[0].v == 1.5 && d.s[0].kind == 2);

    char long_path[200];
    memset(long_path, 'x', sizeof long_path - 1), long_path[sizeof long_path - 1] = 0;
    errno = 0;
    CHECK(p2pm_open(long_path) == NULL && errno == ENAMETOOLONG);
    errno = 0;
    CHECK(p2pm_open("") == NULL && errno == EINVAL);

    /* the transfer guard: +1 at start; -1 and the duration at end, once */
    c = open_immediate(&r);
    p2pm_transfer t = p2pm_transfer_start(c);
    CHECK(t.active == 1 && t.err == 0 && t.client == c);
    sleep_ms(20);
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);
    p2pm_transfer zero = { 0 };
    CHECK_EQ_INT(p2pm_transfer_end(&zero), 0);
    CHECK_EQ_INT(p2pm_transfer_end(NULL), 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 2);
    CHECK_EQ_INT(d.n, 3);
    CHECK(d.s[0].kind == 3 && d.s[0].v == 1 && strcmp(d.s[0].key, "p2p.transfers.active") == 0);
    CHECK(d.s[1].kind == 3 && d.s[1].v == -1 && d.s[1].form == 1);
    CHECK(d.s[2].kind == 4 && strcmp(d.s[2].key, "p2p.transfer.duration") == 0);
    CHECK(d.s[2].v >= 0.02 && d.s[2].v < 10);
    p2pm_close(c);
    receiver_close(&r);
}

/* Series handles produce exactly the datagrams the generic calls produce, across datagram
 * boundaries, and refuse what the generic calls refuse. */
static void test_series_handles(void)
{
    struct receiver r1, r2;
    receiver_open(&r1, 1);
    receiver_open(&r2, 1);
    p2pm_client *generic = open_immediate(&r1), *fast = open_immediate(&r2);
    p2pm_label peer = { "peer", "peer-007" }, le = { "le", "1" };
    p2pm_series bytes, active, duration, bad;
    CHECK_EQ_INT(p2pm_series_init(&bytes, fast, "p2p.bytes_transferred.total", &peer, 1), 0);
    CHECK_EQ_INT(p2pm_series_init(&active, fast, "p2p.transfers.active", NULL, 0), 0);
    CHECK_EQ_INT(p2pm_series_init(&duration, fast, "p2p.transfer.duration", &peer, 1), 0);
    CHECK_EQ_INT(p2pm_series_init(&bad, fast, "bad name", NULL, 0), -EINVAL);
    CHECK_EQ_INT(p2pm_series_counter_add(&bad, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_series_counter_add(&bytes, -1), -EINVAL);
    CHECK_EQ_INT(p2pm_series_observe(&duration, NAN), -EINVAL);
    p2pm_series with_le;
    CHECK_EQ_INT(p2pm_series_init(&with_le, fast, "h", &le, 1), 0);
    CHECK_EQ_INT(p2pm_series_observe(&with_le, 1), -EINVAL);   /* "le" is reserved on histograms */

    CHECK_EQ_INT(p2pm_batch_begin(generic), 0);
    CHECK_EQ_INT(p2pm_batch_begin(fast), 0);
    for (int i = 0; i < 5000; i++) {   /* several full datagrams */
        CHECK_EQ_INT(p2pm_counter_add_u64(generic, "p2p.bytes_transferred.total", 4096 + (uint64_t)i, &peer, 1), 0);
        CHECK_EQ_INT(p2pm_series_counter_add_u64(&bytes, 4096 + (uint64_t)i), 0);
        CHECK_EQ_INT(p2pm_gauge_add(generic, "p2p.transfers.active", i % 2 ? -1 : 1, NULL, 0), 0);
        CHECK_EQ_INT(p2pm_series_gauge_add(&active, i % 2 ? -1 : 1), 0);
        CHECK_EQ_INT(p2pm_histogram_observe(generic, "p2p.transfer.duration", i * 0.25, &peer, 1), 0);
        CHECK_EQ_INT(p2pm_series_observe(&duration, i * 0.25), 0);
    }
    CHECK_EQ_INT(p2pm_batch_end(generic), 0);
    CHECK_EQ_INT(p2pm_batch_end(fast), 0);
    static unsigned char a[P2PM_MAX_DATAGRAM], b[P2PM_MAX_DATAGRAM];
    int datagrams = 0;
    for (;;) {
        ssize_t na = receiver_recv(&r1, a, sizeof a, datagrams ? 200 : 1000);
        ssize_t nb = receiver_recv(&r2, b, sizeof b, datagrams ? 200 : 1000);
        CHECK_EQ_INT((int)na, (int)nb);
        if (na <= 0 || nb <= 0)
            break;
        CHECK(memcmp(a, b, (size_t)na) == 0);
        datagrams++;
    }
    CHECK(datagrams >= 5);
    /* Immediate mode: one datagram per call, identical too. */
    CHECK_EQ_INT(p2pm_series_gauge_set(&active, 3), 0);
    CHECK_EQ_INT(p2pm_gauge_set(generic, "p2p.transfers.active", 3, NULL, 0), 0);
    ssize_t na = receiver_recv(&r1, a, sizeof a, 1000), nb = receiver_recv(&r2, b, sizeof b, 1000);
    CHECK(na > 0 && na == nb && memcmp(a, b, (size_t)na) == 0);
    p2pm_close(generic);
    p2pm_close(fast);
    receiver_close(&r1);
    receiver_close(&r2);
}

/* Every NaN is sent as the canonical quiet NaN 0x7FF8000000000000 (PROTOCOL.md section 3). */
static void test_canonical_nan(void)
{
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    uint64_t payload = 0xfff8000000000001u;   /* negative, with a payload */
    double odd;
    memcpy(&odd, &payload, sizeof odd);
    CHECK_EQ_INT(p2pm_gauge_set(c, "g", odd, NULL, 0), 0);
    ssize_t n = receiver_recv(&r, buf, sizeof buf, 1000);
    static const unsigned char canonical[8] = { 0, 0, 0, 0, 0, 0, 0xf8, 0x7f };
    REQUIRE(n > 8);
    CHECK(memcmp(buf + n - 8, canonical, 8) == 0);
    p2pm_close(c);
    receiver_close(&r);
}


/* ---- Series handles initialized while other threads send (the TSan build checks races) ---- */

static void *handle_main(void *arg)
{
    p2pm_client *c = arg;
    p2pm_label l = { "peer", "node-1" };
    for (int i = 0; i < 2000; i++) {
        p2pm_series h;
        CHECK_EQ_INT(p2pm_series_init(&h, c, "race.bytes", &l, 1), 0);
        CHECK_EQ_INT(p2pm_series_counter_add_u64(&h, 1), 0);
    }
    return NULL;
}

static void test_series_init_while_sending(void)
{
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    struct drainer dr = { .r = &r };
    pthread_t dt, ht;
    REQUIRE(pthread_create(&dt, NULL, drain_main, &dr) == 0);
    REQUIRE(pthread_create(&ht, NULL, handle_main, c) == 0);
    for (int i = 0; i < 2000; i++) {
        CHECK_EQ_INT(p2pm_counter_add(c, "final", 1, NULL, 0), 0);
        if (i % 100 == 0)
            CHECK_EQ_INT(p2pm_flush(c), 0);   /* the pending datagram starts afresh */
    }
    pthread_join(ht, NULL);
    p2pm_close(c);
    sleep_ms(100);
    dr.stop = 1;
    pthread_join(dt, NULL);
    receiver_close(&r);
}

/* ---- The default mode: lossless bursts, bounded calls, exact drops ---- */

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

struct burster {
    p2pm_client *c;
    int id, calls;
    uint64_t max_ns;
};

static void *burst_main(void *arg)
{
    struct burster *b = arg;
    char id[16];
    snprintf(id, sizeof id, "%d", b->id);
    p2pm_label l = { "thread", id };
    for (int i = 0; i < b->calls; i++) {
        uint64_t t0 = mono_ns();
        CHECK_EQ_INT(p2pm_counter_add(b->c, "thread.calls", 1, &l, 1), 0);
        uint64_t dt = mono_ns() - t0;
        if (dt > b->max_ns)
            b->max_ns = dt;
    }
    return NULL;
}

/* A sidecar slower than the senders (1 ms per datagram, a queue of 10 on this kernel), 4 threads
 * at full speed with the library's defaults: every sample arrives, nothing is dropped; the senders
 * are slowed down by the bounded wait for room when they outrun the receiver. */
static void test_default_burst_loses_nothing(void)
{
    enum { T = 4, N = 50000 };
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    struct drainer dr = { .r = &r, .delay_us = 1000 };
    struct burster b[T];
    pthread_t dt, bt[T];
    REQUIRE(pthread_create(&dt, NULL, drain_main, &dr) == 0);
    for (int i = 0; i < T; i++) {
        b[i] = (struct burster){ c, i, N, 0 };
        REQUIRE(pthread_create(&bt[i], NULL, burst_main, &b[i]) == 0);
    }
    uint64_t max_ns = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(bt[i], NULL);
        if (b[i].max_ns > max_ns)
            max_ns = b[i].max_ns;
    }
    p2pm_stats st;
    CHECK_EQ_INT(p2pm_get_stats(c, &st), 0);
    sleep_ms(200);   /* the linger flush sends the rest */
    dr.stop = 1;
    pthread_join(dt, NULL);
    for (int i = 0; i < T; i++)
        CHECK_EQ_INT(dr.per_thread[i], N);
    CHECK_EQ_INT(dr.bad, 0);
    CHECK_EQ_INT(p2pm_dropped(c), 0);
    CHECK_EQ_INT(p2pm_get_stats(c, &st), 0);
    CHECK_EQ_INT(st.dropped_samples, 0);
    CHECK_EQ_INT(st.sent_samples, T * N);
    CHECK_EQ_INT(st.buffered_samples, 0);   /* (waits: usually > 0, unless the senders are slow) */
    printf("default burst: %d samples from %d threads to a slow receiver, %llu datagrams, "
           "%llu waits for room, 0 lost; slowest call %.1f ms (bound %d ms)\n",
           T * N, T, (unsigned long long)st.sent_datagrams, (unsigned long long)st.waits,
           max_ns / 1e6, 2 * P2PM_SEND_WAIT_MS);
    p2pm_close(c);
    receiver_close(&r);
}

/* Records n counter samples, returning the slowest call in ns. */
static uint64_t record_n(p2pm_client *c, const char *name, int n)
{
    uint64_t max_ns = 0;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = mono_ns();
        int rc = p2pm_counter_add(c, name, 1, NULL, 0);
        uint64_t dt = mono_ns() - t0;
        CHECK(rc == 0 || rc == -EAGAIN);
        if (dt > max_ns)
            max_ns = dt;
    }
    return max_ns;
}

/* A sidecar that stops reading (as under SIGSTOP): the first call that finds the queue full waits
 * up to P2PM_SEND_WAIT_MS, later ones do not wait at all; every sample is either received or
 * counted as dropped, exactly, and the drop report reaches the sidecar when it reads again. */
static void test_stopped_sidecar_bounded_and_exact(void)
{
    static struct decoded d;
    enum { N = 200000 };
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    uint64_t max_ns = record_n(c, "stopped.calls", N);
    CHECK_EQ_INT(p2pm_flush(c), -EAGAIN);   /* still stopped: the rest is dropped, counted */
    p2pm_stats st;
    CHECK_EQ_INT(p2pm_get_stats(c, &st), 0);
    CHECK(st.waits >= 1 && st.dropped_datagrams >= 1);
    CHECK(max_ns < 2000000000u);   /* stated: < 2 x P2PM_SEND_WAIT_MS; generous here */
    uint64_t samples = 0, dropped = 0;
    int got = collect_count(&r, &samples, &dropped, 1000);   /* the sidecar reads again */
    CHECK_EQ_INT(got, st.sent_datagrams);
    CHECK_EQ_INT(samples + st.dropped_samples, N);
    CHECK_EQ_INT(samples, st.sent_samples);
    CHECK_EQ_INT(p2pm_counter_add(c, "stopped.after", 1, NULL, 0), 0);
    CHECK_EQ_INT(p2pm_flush(c), 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    CHECK_EQ_INT(d.dropped, st.dropped_datagrams);
    printf("stopped sidecar: %d calls, %llu samples delivered, %llu dropped (counted exactly), "
           "%llu wait(s); slowest call %.1f ms\n", N, (unsigned long long)st.sent_samples,
           (unsigned long long)st.dropped_samples, (unsigned long long)st.waits, max_ns / 1e6);
    p2pm_close(c);
    receiver_close(&r);
}

/* No sidecar at all: calls never wait, every sample is counted as dropped. */
static void test_absent_sidecar_never_waits(void)
{
    enum { N = 100000 };
    struct receiver r;
    receiver_open(&r, 0);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    uint64_t max_ns = record_n(c, "absent.calls", N);
    CHECK_EQ_INT(p2pm_flush(c), -ENOENT);
    p2pm_stats st;
    CHECK_EQ_INT(p2pm_get_stats(c, &st), 0);
    CHECK_EQ_INT(st.waits, 0);
    CHECK_EQ_INT(st.dropped_samples, N);
    CHECK_EQ_INT(st.sent_samples, 0);
    printf("absent sidecar: %d calls, all %llu samples counted as dropped, slowest call %.2f ms\n",
           N, (unsigned long long)st.dropped_samples, max_ns / 1e6);
    p2pm_close(c);
    receiver_close(&r);
}

/* P2PM_BLOCKING: a call that finds the queue full waits its timeout for room, then drops. */
static void test_blocking_mode_waits_then_drops(void)
{
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(p2pm_set_mode(c, P2PM_BLOCKING, 100), 0);
    int sent = 0, rc;
    uint64_t t0 = 0;
    for (;;) {
        t0 = mono_ns();
        if ((rc = p2pm_counter_add(c, "blocking.calls", 1, NULL, 0)) != 0)
            break;
        REQUIRE(++sent < 1000);
    }
    uint64_t waited = mono_ns() - t0;
    CHECK_EQ_INT(rc, -EAGAIN);
    CHECK(waited >= 90000000u && waited < 5000000000u);
    CHECK_EQ_INT(p2pm_dropped(c), 1);
    CHECK_EQ_INT(receiver_drain(&r), sent);
    CHECK_EQ_INT(p2pm_counter_add(c, "blocking.calls", 1, NULL, 0), 0);   /* room again */
    p2pm_close(c);
    receiver_close(&r);
}

/* A sample recorded in the default mode reaches the sidecar by the linger flush. */
static void test_linger_delivers(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    uint64_t t0 = mono_ns();
    CHECK_EQ_INT(p2pm_record_cache_access(c, true, "chunk"), 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 2000), 1);
    uint64_t delay = mono_ns() - t0;
    CHECK(d.n == 1 && strcmp(d.s[0].key, "p2p.cache.hits{cache_type=chunk}") == 0);
    printf("linger: one sample received %.2f ms after the call (P2PM_LINGER_MS %d)\n", delay / 1e6,
           P2PM_LINGER_MS);
    p2pm_close(c);
    receiver_close(&r);
}

/* fork(): the child starts with an empty pending datagram and its exit flushes what it recorded;
 * the parent keeps and sends its own. Nothing lost, nothing twice. */
static void test_fork_and_exit_flush(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);   /* keep them pending across the fork */
    for (int i = 0; i < 100; i++)
        CHECK_EQ_INT(p2pm_counter_add(c, "fork.parent", 1, NULL, 0), 0);
    fflush(stdout);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < 30; i++)
            p2pm_counter_add(c, "fork.child", 1, NULL, 0);
        p2pm_client *own = p2pm_open(r.path);   /* and a client opened in the child */
        for (int i = 0; i < 7; i++)
            p2pm_counter_add(own, "fork.child_own", 1, NULL, 0);
        exit(0);   /* no flush, no close: the exit flush sends both */
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ_INT(p2pm_batch_end(c), 0);
    decoded_reset(&d);
    collect(&r, &d, 1000);
    double parent = 0, child = 0, own = 0;
    for (size_t i = 0; i < d.n; i++) {
        parent += strcmp(d.s[i].key, "fork.parent") == 0 ? d.s[i].v : 0;
        child += strcmp(d.s[i].key, "fork.child") == 0 ? d.s[i].v : 0;
        own += strcmp(d.s[i].key, "fork.child_own") == 0 ? d.s[i].v : 0;
    }
    CHECK(parent == 100 && child == 30 && own == 7);
    CHECK_EQ_INT(d.n, 137);
    p2pm_close(c);
    receiver_close(&r);
}

/* Sum of the p2p.transfers.active adds in d, in order; how many there were; whether the running
 * sum ever went below zero. */
static double active_sum(const struct decoded *d, int *count, bool *negative)
{
    double sum = 0;
    *count = 0;
    *negative = false;
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->s[i].key, "p2p.transfers.active") == 0) {
            sum += d->s[i].v;
            ++*count;
            *negative |= sum < 0;
        }
    return sum;
}

/* A transfer's -1 is never lost, and never sent twice: dropped while the sidecar is stopped, it
 * is delivered by the flusher once there is room, without any further call; a +1 dropped while
 * the sidecar is absent travels with the -1. */
static void test_transfer_cannot_stick(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = open_immediate(&r);
    p2pm_transfer t = p2pm_transfer_start(c);
    CHECK_EQ_INT(t.err, 0);
    int filled = 0;
    while (p2pm_counter_add(c, "filler", 1, NULL, 0) == 0)   /* the sidecar stops reading */
        filled++;
    CHECK_EQ_INT(p2pm_transfer_end(&t), -EAGAIN);   /* the duration is lost, the -1 is kept */
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);         /* twice: nothing */
    p2pm_stats st;
    CHECK_EQ_INT(p2pm_get_stats(c, &st), 0);
    CHECK_EQ_INT(st.dropped_samples, 2);            /* one filler and the duration */
    decoded_reset(&d);
    collect(&r, &d, 1000);                          /* reads again: +1 and the fillers */
    uint64_t t0 = mono_ns();
    int count;
    bool negative;
    while (mono_ns() - t0 < 3000000000u) {          /* the flusher's datagram of its own */
        if (collect(&r, &d, 50) && active_sum(&d, &count, &negative) == 0)
            break;
    }
    CHECK(active_sum(&d, &count, &negative) == 0 && count == 2 && !negative);
    CHECK_EQ_INT(d.dropped, 2);

    /* Absent at the start: the +1 is kept and delivered before or with the -1. */
    receiver_unbind(&r);
    t = p2pm_transfer_start(c);
    CHECK(t.err < 0 && t.err != -EAGAIN);
    CHECK(t.active == 1);
    receiver_bind(&r);
    sleep_ms(P2PM_RECONNECT_MS + 20);
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);
    decoded_reset(&d);
    collect(&r, &d, 1000);
    CHECK(active_sum(&d, &count, &negative) == 0 && count == 2 && !negative);

    /* A kept +1 is delivered before the -1 even when the next datagram is filled to the brim by
     * a batch (room is kept for it; the flusher may also deliver it first on its own). */
    receiver_unbind(&r);
    t = p2pm_transfer_start(c);
    receiver_bind(&r);
    sleep_ms(P2PM_RECONNECT_MS + 20);
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    for (int i = 0; i < 3000; i++)   /* more than one full datagram */
        CHECK_EQ_INT(p2pm_counter_add(c, "same", 1, NULL, 0), 0);
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);
    CHECK_EQ_INT(p2pm_batch_end(c), 0);
    decoded_reset(&d);
    collect(&r, &d, 1000);
    CHECK(active_sum(&d, &count, &negative) == 0 && count == 2 && !negative);
    p2pm_close(c);
    receiver_close(&r);
}

/* The helpers take extra labels (the per-peer convention); the transfer guard's end puts its
 * labels on the duration (invalid ones: the -1 is still sent). */
static void test_helper_labels(void)
{
    static struct decoded d;
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *c = p2pm_open(r.path);
    REQUIRE(c != NULL);
    p2pm_label peer = { "peer", "node-7" }, dup = { "artifact_type", "x" };
    p2pm_label many[16];
    for (int i = 0; i < 16; i++)
        many[i] = (p2pm_label){ "peer", "x" };
    CHECK_EQ_INT(p2pm_batch_begin(c), 0);
    CHECK_EQ_INT(p2pm_record_chunk_transfer_labels(c, 4096, false, &peer, 1), 0);
    CHECK_EQ_INT(p2pm_record_image_import_labels(c, "microvm", true, 5, &peer, 1), 0);
    CHECK_EQ_INT(p2pm_record_image_download_labels(c, "img", false, 1.5, &peer, 1), 0);
    CHECK_EQ_INT(p2pm_record_image_import_labels(c, "microvm", true, 5, &dup, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_record_image_import_labels(c, "microvm", true, 5, many, 16), -EINVAL);
    CHECK_EQ_INT(p2pm_record_chunk_transfer_labels(c, 1, false, NULL, 1), -EINVAL);
    p2pm_transfer t = p2pm_transfer_start(c);
    CHECK_EQ_INT(t.err, 0);
    CHECK_EQ_INT(p2pm_transfer_end_labels(&t, &peer, 1), 0);
    p2pm_label le = { "le", "1" };
    t = p2pm_transfer_start(c);
    CHECK_EQ_INT(p2pm_transfer_end_labels(&t, &le, 1), -EINVAL);   /* the -1 alone */
    CHECK_EQ_INT(p2pm_batch_end(c), 0);
    decoded_reset(&d);
    CHECK_EQ_INT(collect(&r, &d, 1000), 1);
    const char *want[] = {
        "p2p.chunks_transferred.total{peer=node-7}", "p2p.bytes_transferred.total{peer=node-7}",
        "p2p.image.imports.total{artifact_type=microvm,peer=node-7}",
        "p2p.bytes_transferred.total{artifact_type=microvm,peer=node-7}",
        "p2p.image.downloads.total{peer=node-7}", "p2p.image.downloads.failed{peer=node-7}",
        "p2p.transfer.duration{peer=node-7}", "p2p.transfers.active", "p2p.transfers.active",
        "p2p.transfer.duration{peer=node-7}", "p2p.transfers.active", "p2p.transfers.active",
    };
    CHECK_EQ_INT(d.n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < d.n && i < sizeof want / sizeof want[0]; i++)
        if (strcmp(d.s[i].key, want[i]) != 0) {
            fprintf(stderr, "sample %zu: %s, want %s\n", i, d.s[i].key, want[i]);
            test_failures++;
        }
    p2pm_close(c);
    receiver_close(&r);
}

int main(void)
{
    test_canonical_nan();
    test_validation();
    test_sizes_and_batches();
    test_drops();
    test_absent_and_reconnect();
    test_threads();
    test_default_and_open();
    test_series_handles();
    test_series_init_while_sending();
    test_linger_delivers();
    test_default_burst_loses_nothing();
    test_stopped_sidecar_bounded_and_exact();
    test_absent_sidecar_never_waits();
    test_blocking_mode_waits_then_drops();
    test_fork_and_exit_flush();
    test_transfer_cannot_stick();
    test_helper_labels();
    if (test_failures) {
        fprintf(stderr, "test_client: %d failure(s)\n", test_failures);
        return 1;
    }
    printf("test_client: OK\n");
    return 0;
}
