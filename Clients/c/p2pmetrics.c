/*
 * p2pmetrics.c - C client of p2pmetricsd: canonical encoder of wire protocol v1
 * (Clients/PROTOCOL.md) and a non-blocking Unix datagram sender. See p2pmetrics.h.
 */
#define _POSIX_C_SOURCE 200809L

#include "p2pmetrics.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

enum {
    MAGIC = 0xF5,
    TAG_SERIES = 0x01,
    TAG_DROPPED = 0x02,
    KIND_COUNTER = 1, KIND_GAUGE_SET = 2, KIND_GAUGE_ADD = 3, KIND_HISTOGRAM = 4,
    KIND_DISTINCT = 5, KIND_TOPK = 6,
    FORM_UVARINT = 0, FORM_SVARINT = 1, FORM_F64 = 2, FORM_BYTES = 3,
    MAX_KEY = 1024, MAX_TOPK_KEY = 128,
    HDR = 12,                          /* room for magic + dropped record (tag + 10-byte varint) */
    CAP = P2PM_MAX_DATAGRAM - HDR,     /* room for records */
    SLOTS = 64,                        /* series remembered for reuse within one datagram */
    MAX_SERIES = 4096,                 /* series records per datagram (PROTOCOL.md 1.5) */
    MAX_NAME = 200, MAX_LABELS = 16, MAX_LABEL_NAME = 100, MAX_LABEL_VALUE = 1024,
};

struct slot {
    uint64_t hash;   /* series_hash() of the name and labels */
    uint16_t off;    /* offset of the record in buf */
    uint16_t len;
};

struct p2pm_client {
    pthread_mutex_t lock;
    int fd;
    bool connected;
    bool owned;                   /* allocated by p2pm_open() */
    int last_err;                 /* error of the last connection attempt */
    bool tried;                   /* last_try is valid */
    struct timespec last_try;
    struct sockaddr_un addr;
    uint64_t pending_drops;       /* not reported yet */
    uint64_t total_drops;
    unsigned batch_depth;
    uint64_t generation;          /* changes whenever the pending datagram starts afresh */
    size_t len;                   /* bytes of records in buf[HDR..] */
    unsigned nseries;             /* series records in the pending datagram */
    unsigned nslots;
    struct slot slots[SLOTS];     /* slots[i] describes series index i */
    unsigned char buf[HDR + CAP];
};

/* One sample as given by a caller, validated before it is encoded. */
struct sample {
    int kind;
    const char *name;
    const p2pm_label *labels;
    size_t n_labels;
    bool is_u64;
    uint64_t u;
    double d;
    const void *key;   /* KIND_DISTINCT, KIND_TOPK: the item key */
    size_t key_len;
};

/* ---- Validation (PROTOCOL.md 1.3-1.5) ---- */

static bool is_alpha(char ch) { return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z'); }
static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static bool metric_name_ok(const char *s)
{
    size_t n = s ? strnlen(s, MAX_NAME + 1) : 0;
    if (n == 0 || n > MAX_NAME || !(is_alpha(s[0]) || s[0] == '_' || s[0] == ':'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(is_alpha(s[i]) || is_digit(s[i]) || s[i] == '_' || s[i] == ':' || s[i] == '.'))
            return false;
    /* exposed form starting with "p2pmetricsd_" is reserved for the daemon */
    return !(n >= 12 && memcmp(s, "p2pmetricsd", 11) == 0 && (s[11] == '_' || s[11] == '.'));
}

static bool label_name_ok(const char *s)
{
    size_t n = s ? strnlen(s, MAX_LABEL_NAME + 1) : 0;
    if (n == 0 || n > MAX_LABEL_NAME || !(is_alpha(s[0]) || s[0] == '_'))
        return false;
    if (n >= 2 && s[0] == '_' && s[1] == '_')
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(is_alpha(s[i]) || is_digit(s[i]) || s[i] == '_'))
            return false;
    return true;
}

static bool utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned ch = s[i], cp, min;
        size_t len;
        if (ch < 0x80) { i++; continue; }
        if ((ch & 0xE0) == 0xC0)      { len = 2; cp = ch & 0x1F; min = 0x80; }
        else if ((ch & 0xF0) == 0xE0) { len = 3; cp = ch & 0x0F; min = 0x800; }
        else if ((ch & 0xF8) == 0xF0) { len = 4; cp = ch & 0x07; min = 0x10000; }
        else return false;
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* The value rules of PROTOCOL.md 1.3 for numeric samples: finite, and >= 0 for counters;
 * gauge sets take anything. */
static bool value_ok(const struct sample *s)
{
    if (s->is_u64 || s->kind == KIND_GAUGE_SET)
        return true;
    return isfinite(s->d) && !(s->kind == KIND_COUNTER && s->d < 0);
}

static int validate(const struct sample *s)
{
    if (!metric_name_ok(s->name) || s->n_labels > MAX_LABELS || (s->n_labels && !s->labels))
        return -EINVAL;
    for (size_t i = 0; i < s->n_labels; i++) {
        const p2pm_label *l = &s->labels[i];
        if (!label_name_ok(l->name) || !l->value)
            return -EINVAL;
        size_t vn = strnlen(l->value, MAX_LABEL_VALUE + 1);
        if (vn > MAX_LABEL_VALUE || !utf8_ok((const unsigned char *)l->value, vn))
            return -EINVAL;
        if ((s->kind == KIND_HISTOGRAM && strcmp(l->name, "le") == 0) ||
            (s->kind == KIND_TOPK && strcmp(l->name, "key") == 0))
            return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->labels[j].name, l->name) == 0)
                return -EINVAL;
    }
    if (s->kind == KIND_DISTINCT)
        return (s->key || !s->key_len) && s->key_len <= MAX_KEY ? 0 : -EINVAL;
    if (s->kind == KIND_TOPK)
        return s->key && s->key_len >= 1 && s->key_len <= MAX_TOPK_KEY &&
               utf8_ok(s->key, s->key_len) ? 0 : -EINVAL;
    return value_ok(s) ? 0 : -EINVAL;
}

/* ---- Encoding (PROTOCOL.md 1.1, 1.2, 3) ---- */

static size_t uvarint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}

static unsigned char *put_uvarint(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) { *p++ = (unsigned char)(v | 0x80); v >>= 7; }
    *p++ = (unsigned char)v;
    return p;
}

static unsigned char *put_string(unsigned char *p, const void *s, size_t n)
{
    p = put_uvarint(p, n);
    if (n)   /* s may be NULL for an empty key */
        memcpy(p, s, n);
    return p + n;
}

/* Canonical form of a value (PROTOCOL.md 3.1): the form, and the varint or the f64 bits. */
static int value_form(const struct sample *s, uint64_t *bits)
{
    double v = s->d;
    if (s->kind == KIND_DISTINCT || s->kind == KIND_TOPK) { *bits = s->key_len; return FORM_BYTES; }
    if (s->is_u64) { *bits = s->u; return FORM_UVARINT; }
    /* integral iff the conversion to an integer is exact (no libm needed) */
    if (v >= 0 && v < 18446744073709551616.0 && (double)(uint64_t)v == v) {
        *bits = (uint64_t)v;   /* -0.0 too */
        return FORM_UVARINT;
    }
    if (v < 0 && v >= -9223372036854775808.0 && (double)(int64_t)v == v) {
        *bits = ~((uint64_t)(int64_t)v << 1);   /* zigzag of a negative n: ~(2n) */
        return FORM_SVARINT;
    }
    if (v != v) {   /* any NaN: the canonical quiet NaN (PROTOCOL.md section 3) */
        *bits = 0x7ff8000000000000u;
        return FORM_F64;
    }
    memcpy(bits, &v, sizeof v);
    return FORM_F64;
}

/* FNV-1a over the name and labels, each with its NUL terminator as separator. */
static uint64_t series_hash(const struct sample *s)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i <= 2 * s->n_labels; i++) {
        const char *p = i == 0    ? s->name
                        : i % 2 ? s->labels[i / 2].name
                                : s->labels[i / 2 - 1].value;
        do {
            h ^= (unsigned char)*p;
            h *= 0x100000001b3u;
        } while (*p++);
    }
    return h;
}

/* Matches an encoded string at p against str; returns the end of the string or NULL. */
static const unsigned char *match_string(const unsigned char *p, const char *str)
{
    unsigned char len[10];
    size_t n = strlen(str), k = (size_t)(put_uvarint(len, n) - len);
    return memcmp(p, len, k) == 0 && memcmp(p + k, str, n) == 0 ? p + k + n : NULL;
}

/* Whether the series record at rec encodes exactly the name and label list of s. */
static bool same_series(const unsigned char *rec, const struct sample *s)
{
    const unsigned char *p = match_string(rec + 1, s->name);
    if (!p || *p++ != s->n_labels)   /* at most 16 labels: a one-byte uvarint */
        return false;
    for (size_t i = 0; p && i < s->n_labels; i++) {
        p = match_string(p, s->labels[i].name);
        p = p ? match_string(p, s->labels[i].value) : NULL;
    }
    return p != NULL;
}

/* Appends one validated sample (and its series record unless reused) to the pending datagram.
 * -EMSGSIZE when it does not fit; nothing is changed then. */
static int append(p2pm_client *c, const struct sample *s, unsigned *series_index)
{
    size_t name_len = strlen(s->name), rec_len, need;
    rec_len = 1 + uvarint_len(name_len) + name_len + uvarint_len(s->n_labels);
    for (size_t i = 0; i < s->n_labels; i++) {
        size_t kn = strlen(s->labels[i].name), vn = strlen(s->labels[i].value);
        rec_len += uvarint_len(kn) + kn + uvarint_len(vn) + vn;
    }
    uint64_t hash = series_hash(s), bits;
    unsigned index = c->nseries;
    for (unsigned i = 0; i < c->nslots; i++) {
        const struct slot *sl = &c->slots[i];
        if (sl->hash == hash && sl->len == rec_len && same_series(c->buf + sl->off, s)) {
            index = i;
            rec_len = 0;
            break;
        }
    }
    int form = value_form(s, &bits);
    need = rec_len + 1 + uvarint_len(index) +
           (form == FORM_F64 ? 8 : uvarint_len(bits) + (form == FORM_BYTES ? s->key_len : 0));
    if (need > CAP - c->len || (rec_len && c->nseries >= MAX_SERIES))
        return -EMSGSIZE;

    unsigned char *p = c->buf + HDR + c->len;
    if (rec_len) {
        if (c->nslots < SLOTS)   /* else the series is still valid, just never reused */
            c->slots[c->nslots++] =
                (struct slot){ hash, (uint16_t)(p - c->buf), (uint16_t)rec_len };
        c->nseries++;
        *p++ = TAG_SERIES;
        p = put_string(p, s->name, name_len);
        p = put_uvarint(p, s->n_labels);
        for (size_t i = 0; i < s->n_labels; i++) {
            p = put_string(p, s->labels[i].name, strlen(s->labels[i].name));
            p = put_string(p, s->labels[i].value, strlen(s->labels[i].value));
        }
    }
    *p++ = (unsigned char)(s->kind << 4 | form);
    p = put_uvarint(p, index);
    if (form == FORM_F64)
        for (int i = 0; i < 8; i++)
            *p++ = (unsigned char)(bits >> (8 * i));
    else if (form == FORM_BYTES)
        p = put_string(p, s->key, s->key_len);
    else
        p = put_uvarint(p, bits);
    c->len += need;
    if (series_index)
        *series_index = index;
    return 0;
}

/* Appends one sample of a series already defined at `index` in the pending datagram: just the
 * tag, the index and the value. -EMSGSIZE when it does not fit. */
static int append_indexed(p2pm_client *c, const struct sample *s, unsigned index)
{
    uint64_t bits;
    int form = value_form(s, &bits);
    size_t need = 1 + uvarint_len(index) + (form == FORM_F64 ? 8 : uvarint_len(bits));
    if (need > CAP - c->len)
        return -EMSGSIZE;
    unsigned char *p = c->buf + HDR + c->len;
    *p++ = (unsigned char)(s->kind << 4 | form);
    p = put_uvarint(p, index);
    if (form == FORM_F64)
        for (int i = 0; i < 8; i++)
            *p++ = (unsigned char)(bits >> (8 * i));
    else
        put_uvarint(p, bits);
    c->len += need;
    return 0;
}

/* ---- Sending ---- */

/* (Re)connects the socket, at most once per P2PM_RECONNECT_MS. 0 or a negative errno. */
static int reconnect(p2pm_client *c)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (c->tried) {
        int64_t ms = (int64_t)(now.tv_sec - c->last_try.tv_sec) * 1000 +
                     (now.tv_nsec - c->last_try.tv_nsec) / 1000000;
        if (ms < P2PM_RECONNECT_MS)
            return c->last_err ? c->last_err : -ECONNREFUSED;
    }
    c->tried = true;
    c->last_try = now;
    if (connect(c->fd, (const struct sockaddr *)&c->addr, sizeof c->addr) == 0) {
        c->connected = true;
        c->last_err = 0;
        return 0;
    }
    c->last_err = -errno;
    return c->last_err;
}

static bool peer_gone(int e)
{
    return e == ECONNREFUSED || e == ENOTCONN || e == ENOENT || e == ECONNRESET || e == EPIPE ||
           e == EDESTADDRREQ;
}

static int transmit(p2pm_client *c, const unsigned char *p, size_t n)
{
    bool retried = false;
    if (!c->connected && reconnect(c) < 0)
        return c->last_err;
    for (;;) {
        if (send(c->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
            return 0;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EWOULDBLOCK)
            return -EAGAIN;
        if (!peer_gone(e))
            return -e;
        c->connected = false;   /* the sidecar went away: try its socket path again */
        c->last_err = -e;
        if (retried || reconnect(c) < 0)
            return -e;
        retried = true;
    }
}

/* Sends the pending datagram, led by the pending drop report, then starts an empty one. */
static int send_pending(p2pm_client *c)
{
    if (c->len == 0)
        return 0;
    unsigned char hdr[HDR], *p = hdr;
    *p++ = MAGIC;
    if (c->pending_drops) {
        *p++ = TAG_DROPPED;
        p = put_uvarint(p, c->pending_drops);
    }
    size_t hlen = (size_t)(p - hdr);
    memcpy(c->buf + HDR - hlen, hdr, hlen);
    int r = transmit(c, c->buf + HDR - hlen, hlen + c->len);
    c->len = 0;
    c->nseries = 0;
    c->nslots = 0;
    c->generation++;
    if (r == 0) {
        c->pending_drops = 0;
    } else {
        c->pending_drops++;
        c->total_drops++;
    }
    return r;
}

/* Appends samples that must travel in one datagram, sending the batch so far first if they do
 * not fit after it (its failure is counted, not returned: it is not about these samples); sends
 * at once outside batch mode. Called with the lock held. */
static int add_group(p2pm_client *c, const struct sample *s, size_t n)
{
    for (;;) {
        size_t len = c->len, i = 0;
        unsigned nseries = c->nseries, nslots = c->nslots;
        while (i < n && append(c, &s[i], NULL) == 0)
            i++;
        if (i == n)
            break;
        c->len = len;              /* roll back the part of the group already appended */
        c->nseries = nseries;
        c->nslots = nslots;
        if (len == 0)
            return -EMSGSIZE;      /* does not fit even in an empty datagram */
        send_pending(c);           /* then try again in an empty datagram */
    }
    return c->batch_depth ? 0 : send_pending(c);
}

/* ---- Clients ---- */

static _Atomic(p2pm_client *) default_client;
static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;

/* Replaces NULL by the default client, opening it on first use. */
static int resolve(p2pm_client **c)
{
    if (*c)
        return 0;
    p2pm_client *d = atomic_load_explicit(&default_client, memory_order_acquire);
    if (!d) {
        int err = 0;
        pthread_mutex_lock(&default_lock);
        d = atomic_load_explicit(&default_client, memory_order_relaxed);
        if (!d) {
            d = p2pm_open(NULL);
            if (d)
                atomic_store_explicit(&default_client, d, memory_order_release);
            else
                err = errno ? -errno : -ENOMEM;
        }
        pthread_mutex_unlock(&default_lock);
        if (!d)
            return err;
    }
    *c = d;
    return 0;
}

size_t p2pm_client_size(void)
{
    return sizeof(p2pm_client);
}

p2pm_client *p2pm_open_in(void *mem, size_t size, const char *socket_path)
{
    const char *path = socket_path;
    if (!mem || size < sizeof(p2pm_client)) {
        errno = EINVAL;
        return NULL;
    }
    if (!path) {
        path = getenv(P2PM_SOCKET_ENV);
        if (!path || !*path)
            path = P2PM_DEFAULT_SOCKET;
    }
    p2pm_client *c = mem;
    memset(c, 0, sizeof *c);
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof c->addr.sun_path) {
        errno = n ? ENAMETOOLONG : EINVAL;
        return NULL;
    }
    c->addr.sun_family = AF_UNIX;
    memcpy(c->addr.sun_path, path, n);
#ifdef SOCK_CLOEXEC
    c->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
#else
    c->fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (c->fd >= 0) {
        fcntl(c->fd, F_SETFD, FD_CLOEXEC);
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
    }
#endif
    if (c->fd < 0)
        return NULL;
    int r = pthread_mutex_init(&c->lock, NULL);
    if (r != 0) {
        close(c->fd);
        errno = r;
        return NULL;
    }
    reconnect(c);   /* an absent sidecar is fine: sends connect later */
    return c;
}

p2pm_client *p2pm_open(const char *socket_path)
{
    void *mem = malloc(sizeof(p2pm_client));
    if (!mem)
        return NULL;
    p2pm_client *c = p2pm_open_in(mem, sizeof(p2pm_client), socket_path);
    if (!c) {
        int e = errno;
        free(mem);
        errno = e;
        return NULL;
    }
    c->owned = true;
    return c;
}

void p2pm_close(p2pm_client *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    send_pending(c);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    close(c->fd);
    if (c->owned)
        free(c);
}

uint64_t p2pm_dropped(p2pm_client *c)
{
    if (!c && !(c = atomic_load_explicit(&default_client, memory_order_acquire)))
        return 0;
    pthread_mutex_lock(&c->lock);
    uint64_t n = c->total_drops;
    pthread_mutex_unlock(&c->lock);
    return n;
}

/* ---- Samples and batches ---- */

static int submit(p2pm_client *c, const struct sample *s, size_t n)
{
    int r = resolve(&c);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = validate(&s[i]);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    r = add_group(c, s, n);
    pthread_mutex_unlock(&c->lock);
    return r;
}

#define SAMPLE(kind, name, labels, n, v) \
    ((struct sample){ (kind), (name), (labels), (n), false, 0, (v), NULL, 0 })
#define SAMPLE_U64(name, labels, n, v) \
    ((struct sample){ KIND_COUNTER, (name), (labels), (n), true, (v), 0, NULL, 0 })
#define SAMPLE_KEY(kind, name, labels, n, k, klen) \
    ((struct sample){ (kind), (name), (labels), (n), false, 0, 0, (k), (klen) })

int p2pm_counter_add(p2pm_client *c, const char *name, double value,
                     const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE(KIND_COUNTER, name, labels, n_labels, value);
    return submit(c, &s, 1);
}

int p2pm_counter_add_u64(p2pm_client *c, const char *name, uint64_t value,
                         const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE_U64(name, labels, n_labels, value);
    return submit(c, &s, 1);
}

int p2pm_gauge_set(p2pm_client *c, const char *name, double value,
                   const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE(KIND_GAUGE_SET, name, labels, n_labels, value);
    return submit(c, &s, 1);
}

int p2pm_gauge_add(p2pm_client *c, const char *name, double delta,
                   const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE(KIND_GAUGE_ADD, name, labels, n_labels, delta);
    return submit(c, &s, 1);
}

int p2pm_histogram_observe(p2pm_client *c, const char *name, double value,
                           const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE(KIND_HISTOGRAM, name, labels, n_labels, value);
    return submit(c, &s, 1);
}

int p2pm_distinct_add(p2pm_client *c, const char *name, const void *key, size_t key_len,
                      const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE_KEY(KIND_DISTINCT, name, labels, n_labels, key, key_len);
    return submit(c, &s, 1);
}

int p2pm_topk_add(p2pm_client *c, const char *name, const char *key,
                  const p2pm_label *labels, size_t n_labels)
{
    struct sample s = SAMPLE_KEY(KIND_TOPK, name, labels, n_labels, key, key ? strnlen(key, MAX_TOPK_KEY + 1) : 0);
    return submit(c, &s, 1);
}

/* ---- Series handles ---- */

int p2pm_series_init(p2pm_series *h, p2pm_client *c, const char *name, const p2pm_label *labels,
                     size_t n_labels)
{
    if (!h)
        return -EINVAL;
    memset(h, 0, sizeof *h);
    int r = resolve(&c);
    if (r)
        return r;
    struct sample probe = { KIND_GAUGE_SET, name, labels, n_labels, false, 0, 0, NULL, 0 };
    if ((r = validate(&probe)) != 0)
        return r;
    h->client = c;
    h->name = name;
    h->labels = labels;
    h->n_labels = n_labels;
    h->histogram_ok = true;
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(labels[i].name, "le") == 0)
            h->histogram_ok = false;
    h->generation = c->generation - 1;   /* no index known yet */
    return 0;
}

/* One sample through a handle: in the common case (its series already in the pending datagram)
 * only the value is encoded, under the lock. */
static int series_submit(p2pm_series *h, struct sample *s)
{
    if (!h || !h->client)
        return -EINVAL;
    if (s->kind == KIND_HISTOGRAM && !h->histogram_ok)
        return -EINVAL;
    if (!value_ok(s))
        return -EINVAL;
    p2pm_client *c = h->client;
    int r = 0;
    pthread_mutex_lock(&c->lock);
    if (h->generation == c->generation && h->index < c->nseries && append_indexed(c, s, h->index) == 0) {
        if (!c->batch_depth)
            r = send_pending(c);
    } else {
        size_t len = c->len;
        unsigned index;
        r = append(c, s, &index);
        if (r == -EMSGSIZE && len > 0) {   /* the pending datagram is full: send it, start anew */
            send_pending(c);
            r = append(c, s, &index);
        }
        if (r == 0) {
            h->generation = c->generation;
            h->index = index;
            if (!c->batch_depth)
                r = send_pending(c);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

#define HANDLE_SAMPLE(kind, v) \
    ((struct sample){ (kind), h ? h->name : NULL, h ? h->labels : NULL, h ? h->n_labels : 0, false, 0, (v), NULL, 0 })

int p2pm_series_counter_add(p2pm_series *h, double value)
{
    struct sample s = HANDLE_SAMPLE(KIND_COUNTER, value);
    return series_submit(h, &s);
}

int p2pm_series_counter_add_u64(p2pm_series *h, uint64_t value)
{
    struct sample s = HANDLE_SAMPLE(KIND_COUNTER, 0);
    s.is_u64 = true;
    s.u = value;
    return series_submit(h, &s);
}

int p2pm_series_gauge_set(p2pm_series *h, double value)
{
    struct sample s = HANDLE_SAMPLE(KIND_GAUGE_SET, value);
    return series_submit(h, &s);
}

int p2pm_series_gauge_add(p2pm_series *h, double delta)
{
    struct sample s = HANDLE_SAMPLE(KIND_GAUGE_ADD, delta);
    return series_submit(h, &s);
}

int p2pm_series_observe(p2pm_series *h, double value)
{
    struct sample s = HANDLE_SAMPLE(KIND_HISTOGRAM, value);
    return series_submit(h, &s);
}

int p2pm_batch_begin(p2pm_client *c)
{
    int r = resolve(&c);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    c->batch_depth++;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int p2pm_batch_end(p2pm_client *c)
{
    int r = resolve(&c);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    if (c->batch_depth == 0)
        r = -EINVAL;
    else if (--c->batch_depth == 0)
        r = send_pending(c);
    pthread_mutex_unlock(&c->lock);
    return r;
}

int p2pm_flush(p2pm_client *c)
{
    int r = resolve(&c);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    r = send_pending(c);
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* ---- P2P helpers ---- */

int p2pm_record_image_import(p2pm_client *c, const char *artifact_type, bool success,
                             uint64_t size_bytes)
{
    p2pm_label l = { "artifact_type", artifact_type };
    struct sample s[2] = { SAMPLE_U64("p2p.image.imports.total", &l, 1, 1) };
    if (!success)
        s[1] = SAMPLE_U64("p2p.image.imports.failed", &l, 1, 1);
    else
        s[1] = SAMPLE_U64("p2p.bytes_transferred.total", &l, 1, size_bytes);
    return submit(c, s, success && size_bytes == 0 ? 1 : 2);
}

int p2pm_record_image_download(p2pm_client *c, const char *image_id, bool success,
                               double duration_secs)
{
    (void)image_id;   /* not a label: one series per image would be unbounded */
    struct sample s[3] = {
        SAMPLE_U64("p2p.image.downloads.total", NULL, 0, 1),
        SAMPLE(KIND_HISTOGRAM, "p2p.transfer.duration", NULL, 0, duration_secs),
        SAMPLE_U64("p2p.image.downloads.failed", NULL, 0, 1),
    };
    if (!success) {   /* order of the seed: total, failed, duration */
        struct sample h = s[1];
        s[1] = s[2];
        s[2] = h;
    }
    return submit(c, s, success ? 2 : 3);
}

int p2pm_record_chunk_transfer(p2pm_client *c, uint64_t chunk_size, bool deduplicated)
{
    return p2pm_record_chunk_transfer_hash(c, chunk_size, deduplicated, NULL);
}

int p2pm_record_chunk_transfer_hash(p2pm_client *c, uint64_t chunk_size, bool deduplicated,
                                    const char *chunk_hash)
{
    struct sample s[3] = {
        SAMPLE_U64("p2p.chunks_transferred.total", NULL, 0, 1),
        SAMPLE_U64("p2p.bytes_transferred.total", NULL, 0, chunk_size),
    };
    size_t n = deduplicated ? 1 : 2;
    if (deduplicated)
        s[0] = SAMPLE_U64("p2p.chunks_deduplicated.total", NULL, 0, 1);
    if (chunk_hash)
        s[n++] = SAMPLE_KEY(KIND_DISTINCT, "p2p.chunks.unique", NULL, 0, chunk_hash,
                            strnlen(chunk_hash, MAX_KEY + 1));
    return submit(c, s, n);
}

int p2pm_record_chunk_request(p2pm_client *c, const char *chunk_hash)
{
    struct sample s = SAMPLE_KEY(KIND_TOPK, "p2p.chunks.requested", NULL, 0, chunk_hash,
                                 chunk_hash ? strnlen(chunk_hash, MAX_TOPK_KEY + 1) : 0);
    return submit(c, &s, 1);
}

int p2pm_record_verification(p2pm_client *c, bool success, const char *verification_type)
{
    p2pm_label l = { "verification_type", verification_type };
    struct sample s = SAMPLE_U64(success ? "p2p.verification.success" : "p2p.verification.failed",
                                 &l, 1, 1);
    return submit(c, &s, 1);
}

int p2pm_record_cache_access(p2pm_client *c, bool hit, const char *cache_type)
{
    p2pm_label l = { "cache_type", cache_type };
    struct sample s = SAMPLE_U64(hit ? "p2p.cache.hits" : "p2p.cache.misses", &l, 1, 1);
    return submit(c, &s, 1);
}

p2pm_transfer p2pm_transfer_start(p2pm_client *c)
{
    p2pm_transfer t = { c, { 0, 0 }, 1, 0 };
    clock_gettime(CLOCK_MONOTONIC, &t.start);
    t.err = p2pm_gauge_add(c, "p2p.transfers.active", 1, NULL, 0);
    return t;
}

int p2pm_transfer_end(p2pm_transfer *t)
{
    if (!t || !t->active)
        return 0;
    t->active = 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double secs = (double)(now.tv_sec - t->start.tv_sec) +
                  (double)(now.tv_nsec - t->start.tv_nsec) / 1e9;
    struct sample s[2] = {
        SAMPLE(KIND_GAUGE_ADD, "p2p.transfers.active", NULL, 0, -1),
        SAMPLE(KIND_HISTOGRAM, "p2p.transfer.duration", NULL, 0, secs < 0 ? 0 : secs),
    };
    /* A start whose +1 never reached the sidecar must not be answered by a -1: that would leave
     * p2p.transfers.active stuck below zero. The duration is still worth recording. */
    if (t->err != 0)
        return submit(t->client, &s[1], 1);
    return submit(t->client, s, 2);
}
