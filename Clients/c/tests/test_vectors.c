/*
 * test_vectors.c - conformance of the C client to the shared wire-protocol vectors
 * (Clients/testdata/vectors.txt, format in PROTOCOL.md section 7).
 *
 * For every `vector`: a fresh client on a receiver socket bound here; the vector's pending drop
 * count is produced for real (the receiver's queue is filled with the client's own datagrams
 * until sends fail, then more sends are dropped); its `call` lines are replayed in batch mode;
 * the one datagram received must equal `bytes`. Then the seed helpers are checked against the
 * seed_* vectors they must reproduce.
 *
 * usage: test_vectors [path/to/vectors.txt]
 */
#include "testutil.h"

#include <math.h>

struct call {
    char kind[32];
    char name[256];
    double value;
    char key[1100];   /* distinct_add, topk_add: the item key instead of a value */
    size_t n_labels;
    char label_names[16][128];
    char label_values[16][1100];
};

struct vector {
    char id[128];
    unsigned long drops;
    size_t n_calls;
    struct call calls[8];
    char hex[2 * P2PM_MAX_DATAGRAM + 1];
};

/* Copies a string that must fit. */
static void copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    REQUIRE(n < cap);
    memcpy(dst, src, n + 1);
}

/* Decodes %XX escapes in place. */
static void unescape(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '%' && p[1] && p[2]) {
            char h[3] = { p[1], p[2], 0 };
            *o++ = (char)strtol(h, NULL, 16);
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
}

static void parse_call(char *line, struct call *c)
{
    char *save = NULL, *tok;
    REQUIRE((tok = strtok_r(line, " ", &save)) != NULL);
    copy(c->kind, sizeof c->kind, tok);
    REQUIRE((tok = strtok_r(NULL, " ", &save)) != NULL);
    unescape(tok);
    copy(c->name, sizeof c->name, tok);
    REQUIRE((tok = strtok_r(NULL, " ", &save)) != NULL);
    if (strcmp(c->kind, "distinct_add") == 0 || strcmp(c->kind, "topk_add") == 0) {
        unescape(tok);
        copy(c->key, sizeof c->key, tok);
        c->value = 0;
    } else {
        char *end;
        c->value = strtod(tok, &end);
        REQUIRE(*end == 0);
    }
    c->n_labels = 0;
    while ((tok = strtok_r(NULL, " ", &save)) != NULL) {
        char *eq = strchr(tok, '=');
        REQUIRE(eq != NULL && c->n_labels < 16);
        *eq = 0;
        unescape(tok);
        unescape(eq + 1);
        copy(c->label_names[c->n_labels], sizeof c->label_names[0], tok);
        copy(c->label_values[c->n_labels], sizeof c->label_values[0], eq + 1);
        c->n_labels++;
    }
}

static int do_call(p2pm_client *cl, const struct call *c)
{
    p2pm_label labels[16];
    for (size_t i = 0; i < c->n_labels; i++)
        labels[i] = (p2pm_label){ c->label_names[i], c->label_values[i] };
    if (strcmp(c->kind, "counter_add") == 0)
        return p2pm_counter_add(cl, c->name, c->value, labels, c->n_labels);
    if (strcmp(c->kind, "gauge_set") == 0)
        return p2pm_gauge_set(cl, c->name, c->value, labels, c->n_labels);
    if (strcmp(c->kind, "gauge_add") == 0)
        return p2pm_gauge_add(cl, c->name, c->value, labels, c->n_labels);
    if (strcmp(c->kind, "histogram_observe") == 0)
        return p2pm_histogram_observe(cl, c->name, c->value, labels, c->n_labels);
    if (strcmp(c->kind, "distinct_add") == 0)
        return p2pm_distinct_add(cl, c->name, c->key, strlen(c->key), labels, c->n_labels);
    if (strcmp(c->kind, "topk_add") == 0)
        return p2pm_topk_add(cl, c->name, c->key, labels, c->n_labels);
    fprintf(stderr, "unknown call kind %s\n", c->kind);
    exit(1);
}

/* Makes exactly `drops` real drops: fills the receiver's queue until a send fails, drops the
 * rest, then empties the queue. */
static void make_drops(p2pm_client *cl, struct receiver *r, unsigned long drops)
{
    unsigned long sent = 0;
    if (drops == 0)
        return;
    for (;;) {
        int rc = p2pm_counter_add(cl, "filler", 1, NULL, 0);
        if (rc == -EAGAIN)
            break;
        CHECK_EQ_INT(rc, 0);
        REQUIRE(++sent < 100000);
    }
    for (unsigned long i = 1; i < drops; i++)
        CHECK_EQ_INT(p2pm_counter_add(cl, "filler", 1, NULL, 0), -EAGAIN);
    CHECK_EQ_INT(p2pm_dropped(cl), drops);
    CHECK_EQ_INT(receiver_drain(r), sent);
}

/* Receives the one datagram the client sent and compares it with hex. */
static void expect_datagram(struct receiver *r, const char *id, const char *hex)
{
    static unsigned char buf[65536];
    static char got[2 * 65536 + 1];
    ssize_t n = receiver_recv(r, buf, sizeof buf, 1000);
    REQUIRE(n > 0);
    to_hex(buf, (size_t)n, got);
    if (strcmp(got, hex) != 0) {
        fprintf(stderr, "vector %s: bytes differ\n  want %s\n  got  %s\n", id, hex, got);
        test_failures++;
    }
    CHECK_EQ_INT(receiver_drain(r), 0);   /* exactly one datagram */
}

static void run_vector(const struct vector *v)
{
    struct receiver r;
    receiver_open(&r, 1);
    p2pm_client *cl = p2pm_open(r.path);
    REQUIRE(cl != NULL);
    CHECK_EQ_INT(p2pm_set_mode(cl, P2PM_IMMEDIATE, 0), 0);   /* make_drops needs real drops */
    make_drops(cl, &r, v->drops);
    CHECK_EQ_INT(p2pm_batch_begin(cl), 0);
    for (size_t i = 0; i < v->n_calls; i++)
        CHECK_EQ_INT(do_call(cl, &v->calls[i]), 0);
    CHECK_EQ_INT(receiver_drain(&r), 0);   /* nothing sent before the batch ends */
    CHECK_EQ_INT(p2pm_batch_end(cl), 0);
    expect_datagram(&r, v->id, v->hex);
    CHECK_EQ_INT(p2pm_dropped(cl), v->drops);
    p2pm_close(cl);
    receiver_close(&r);
}

static struct vector vectors[40];
static size_t n_vectors;

static void load(const char *path)
{
    static char line[1 << 18];
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    struct vector *v = NULL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == '#' || line[0] == 0)
            continue;
        if (strncmp(line, "vector ", 7) == 0) {
            REQUIRE(n_vectors < sizeof vectors / sizeof vectors[0]);
            v = &vectors[n_vectors++];
            memset(v, 0, sizeof *v);
            copy(v->id, sizeof v->id, line + 7);
        } else if (strncmp(line, "reject ", 7) == 0) {
            v = NULL;   /* decoder vectors: not for an encoder */
        } else if (v && strncmp(line, "drops ", 6) == 0) {
            v->drops = strtoul(line + 6, NULL, 10);
        } else if (v && strncmp(line, "call ", 5) == 0) {
            REQUIRE(v->n_calls < sizeof v->calls / sizeof v->calls[0]);
            parse_call(line + 5, &v->calls[v->n_calls++]);
        } else if (v && strncmp(line, "bytes ", 6) == 0) {
            copy(v->hex, sizeof v->hex, line + 6);
        } else if (strcmp(line, "end") == 0) {
            v = NULL;
        }
    }
    fclose(f);
}

static const struct vector *find(const char *id)
{
    for (size_t i = 0; i < n_vectors; i++)
        if (strcmp(vectors[i].id, id) == 0)
            return &vectors[i];
    fprintf(stderr, "vector %s missing\n", id);
    exit(1);
}

/* The seed helpers, sent one call per datagram (P2PM_IMMEDIATE), must reproduce the seed_*
 * vectors; so must a helper sent by the default mode's linger flush. */
static void test_helpers(void)
{
    struct receiver r;
    unsigned char buf0[256];
    receiver_open(&r, 1);
    p2pm_client *cl = p2pm_open(r.path);
    REQUIRE(cl != NULL);
    CHECK_EQ_INT(p2pm_record_image_import(cl, "microvm", true, 1073741824), 0);   /* buffered */
    expect_datagram(&r, "seed_import_success (linger)", find("seed_import_success")->hex);
    CHECK_EQ_INT(p2pm_set_mode(cl, P2PM_IMMEDIATE, 0), 0);

    CHECK_EQ_INT(p2pm_record_image_import(cl, "microvm", true, 1073741824), 0);
    expect_datagram(&r, "seed_import_success (helper)", find("seed_import_success")->hex);
    CHECK_EQ_INT(p2pm_record_image_import(cl, "container", false, 4096), 0);
    expect_datagram(&r, "seed_import_failure (helper)", find("seed_import_failure")->hex);
    CHECK_EQ_INT(p2pm_record_image_download(cl, "img-1", false, 12.5), 0);
    expect_datagram(&r, "seed_download_failure (helper)", find("seed_download_failure")->hex);
    CHECK_EQ_INT(p2pm_record_chunk_transfer_hash(cl, 4096, false, "sha256:4f2a"), 0);
    expect_datagram(&r, "seed_chunk_transfer_with_hash (helper)", find("seed_chunk_transfer_with_hash")->hex);
    CHECK_EQ_INT(p2pm_record_chunk_request(cl, "sha256:4f2a"), 0);
    expect_datagram(&r, "seed_chunk_request (helper)", find("seed_chunk_request")->hex);
    /* Keys the protocol refuses are refused at the caller. */
    CHECK_EQ_INT(p2pm_record_chunk_request(cl, ""), -EINVAL);
    CHECK_EQ_INT(p2pm_record_chunk_request(cl, NULL), -EINVAL);
    CHECK_EQ_INT(p2pm_topk_add(cl, "t", "\xc3\x28", NULL, 0), -EINVAL);
    p2pm_label key_label = { "key", "x" };
    CHECK_EQ_INT(p2pm_topk_add(cl, "t", "a", &key_label, 1), -EINVAL);
    CHECK_EQ_INT(p2pm_distinct_add(cl, "d", NULL, 0, NULL, 0), 0);
    (void)receiver_recv(&r, buf0, sizeof buf0, 1000);

    /* The transfer guard, start and end batched as in the vector. The elapsed time cannot be
     * 3.75 s exactly: everything but the f64 must match, and the f64 must be >= 3.75 s. */
    const char *want = find("seed_transfer_guard")->hex;
    unsigned char buf[256];
    char got[513];
    CHECK_EQ_INT(p2pm_batch_begin(cl), 0);
    p2pm_transfer t = p2pm_transfer_start(cl);
    CHECK_EQ_INT(t.err, 0);
    t.start.tv_sec -= 4;                     /* pretend it started 3.75 s ago */
    t.start.tv_nsec += 250000000;
    if (t.start.tv_nsec >= 1000000000) {
        t.start.tv_sec++;
        t.start.tv_nsec -= 1000000000;
    }
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);
    CHECK_EQ_INT(p2pm_transfer_end(&t), 0);  /* ending twice is harmless */
    CHECK_EQ_INT(p2pm_batch_end(cl), 0);
    ssize_t n = receiver_recv(&r, buf, sizeof buf, 1000);
    REQUIRE(n > 8);
    to_hex(buf, (size_t)n, got);
    CHECK(strlen(got) == strlen(want) && strncmp(got, want, strlen(want) - 16) == 0);
    double secs;
    memcpy(&secs, buf + n - 8, 8);           /* little-endian host */
    CHECK(secs >= 3.75 && secs < 60);
    CHECK_EQ_INT(receiver_drain(&r), 0);
    CHECK_EQ_INT(p2pm_dropped(cl), 0);
    p2pm_close(cl);
    receiver_close(&r);
}

int main(int argc, char **argv)
{
    load(argc > 1 ? argv[1] : "../testdata/vectors.txt");
    REQUIRE(n_vectors >= 15);
    for (size_t i = 0; i < n_vectors; i++)
        run_vector(&vectors[i]);
    test_helpers();
    if (test_failures) {
        fprintf(stderr, "test_vectors: %d failure(s)\n", test_failures);
        return 1;
    }
    printf("test_vectors: %zu vectors and 7 helper vectors OK\n", n_vectors);
    return 0;
}
