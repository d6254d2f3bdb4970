/*
 * p2pmetrics.c - C client of p2pmetricsd: canonical encoder of wire protocol v1
 * (Clients/PROTOCOL.md) and a non-blocking Unix datagram sender. See p2pmetrics.h.
 */
#define _POSIX_C_SOURCE 200809L

#include "p2pmetrics.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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
    DEBT_ROOM = 40,                    /* the fold of the transfer debt: series record + sample */
    MAX_NAME = 200, MAX_LABELS = 16, MAX_LABEL_NAME = 100, MAX_LABEL_VALUE = 1024,
};

struct slot {
    uint64_t hash;   /* series_hash() of the name and labels */
    uint16_t off;    /* offset of the record in buf */
    uint16_t len;
};

struct p2pm_client {
    pthread_mutex_t lock;
    pthread_cond_t wake;          /* the flusher waits on it (CLOCK_MONOTONIC) */
    pthread_t flusher;
    bool flusher_running;         /* the thread exists (in this process) */
    bool stopping;                /* p2pm_close(): the flusher must exit */
    p2pm_client *next;            /* the list of open clients (exit flush, fork) */
    p2pm_mode mode;
    int wait_ms;                  /* longest wait for room in the sidecar's queue */
    bool stalled;                 /* a wait timed out: no waiting until a send gets through */
    struct timespec first_at;     /* CLOCK_MONOTONIC time of the pending datagram's first sample */
    struct timespec debt_try;     /* last debt-only send attempt */
    int64_t active_debt;          /* p2p.transfers.active adds dropped: resent in a later datagram */
    int64_t active_pending;       /* p2p.transfers.active adds in the pending datagram */
    bool folding;                 /* appending the debt itself: may use the room kept for it */
    uint64_t pending_samples;     /* samples in the pending datagram */
    uint64_t kept_pending;        /* of which transfer adds (kept when the datagram is dropped) */
    p2pm_stats stats;
    int fd;
    bool connected;
    bool owned;                   /* allocated by p2pm_open() */
    int last_err;                 /* error of the last connection attempt */
    bool tried;                   /* last_try is valid */
    struct timespec last_try;
    struct sockaddr_un addr;
    uint64_t pending_drops;       /* not reported yet */
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

/* Room left for records in the pending datagram. While transfer adds wait to be resent (the
 * debt), room for their fold is kept, so that it always fits in the next datagram. */
static size_t room(const p2pm_client *c)
{
    size_t keep = c->active_debt && !c->folding ? DEBT_ROOM : 0;
    return CAP - c->len > keep ? CAP - c->len - keep : 0;
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
    unsigned max_series = c->active_debt && !c->folding ? MAX_SERIES - 1 : MAX_SERIES;
    if (need > room(c) || (rec_len && c->nseries >= max_series))
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
    if (need > room(c))
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

/* ---- Time ---- */

static struct timespec now_mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static struct timespec plus_ms(struct timespec t, int64_t ms)
{
    t.tv_sec += (time_t)(ms / 1000);
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* Milliseconds from a to b, rounded up (negative when b is before a). */
static int64_t ms_between(const struct timespec *a, const struct timespec *b)
{
    int64_t ns = (int64_t)(b->tv_sec - a->tv_sec) * 1000000000 + (b->tv_nsec - a->tv_nsec);
    return ns > 0 ? (ns + 999999) / 1000000 : ns / 1000000;
}

/* ---- Sending ---- */

/* (Re)connects the socket, at most once per P2PM_RECONNECT_MS. 0 or a negative errno. */
static int reconnect(p2pm_client *c)
{
    struct timespec now = now_mono();
    if (c->tried && ms_between(&c->last_try, &now) <= P2PM_RECONNECT_MS)
        return c->last_err ? c->last_err : -ECONNREFUSED;
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

/* Sends one datagram. When the sidecar's queue is full, waits up to wait_ms for room
 * (poll(POLLOUT) on the connected socket) before giving up with -EAGAIN. An absent sidecar
 * fails at once. */
static int transmit(p2pm_client *c, const unsigned char *p, size_t n, int wait_ms)
{
    bool retried = false, waited = false;
    struct timespec deadline = { 0, 0 };
    if (!c->connected && reconnect(c) < 0)
        return c->last_err;
    for (;;) {
        if (send(c->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
            return 0;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK) {
            struct timespec now = now_mono();
            if (!waited) {
                if (wait_ms <= 0)
                    return -EAGAIN;
                waited = true;
                c->stats.waits++;
                deadline = plus_ms(now, wait_ms);
            }
            int64_t left = ms_between(&now, &deadline);
            if (left <= 0)
                return -EAGAIN;
            struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
            poll(&pfd, 1, (int)left);
            continue;
        }
        if (!peer_gone(e))
            return -e;
        c->connected = false;   /* the sidecar went away: try its socket path again */
        c->last_err = -e;
        if (retried || reconnect(c) < 0)
            return -e;
        retried = true;
    }
}

/* How long a call may wait for room: never in P2PM_IMMEDIATE mode, nor in P2PM_BUFFERED mode
 * once a wait timed out (until a datagram gets through again). */
static int call_wait_ms(const p2pm_client *c)
{
    if (c->mode == P2PM_IMMEDIATE || (c->mode == P2PM_BUFFERED && c->stalled))
        return 0;
    return c->wait_ms;
}

enum keep { DROP, KEEP_IF_FULL, KEEP_ALWAYS };

static void reset_pending(p2pm_client *c)
{
    c->len = 0;
    c->nseries = 0;
    c->nslots = 0;
    c->generation++;
    c->pending_samples = 0;
    c->active_pending = 0;
    c->kept_pending = 0;
}

/* Sends the pending datagram, led by the pending drop report and followed by the undelivered
 * p2p.transfers.active adds (the debt, for which room is kept), then starts an empty one. The
 * datagram is applied whole, so a -1 in it never meets a gauge still missing its kept +1. With KEEP_*, a
 * failed send (KEEP_IF_FULL: only a full queue) leaves everything as it was and is not counted;
 * otherwise a failure drops the datagram: counted, and its transfer adds become debt. */
static int send_pending(p2pm_client *c, int wait_ms, enum keep keep)
{
    int64_t debt = c->active_debt;
    if (c->len == 0 && !(debt && keep == KEEP_ALWAYS))
        return 0;
    size_t len = c->len;
    unsigned nseries = c->nseries, nslots = c->nslots;
    struct sample fold = { KIND_GAUGE_ADD, "p2p.transfers.active", NULL, 0, false, 0, (double)debt,
                           NULL, 0 };
    c->folding = true;   /* the room kept for it: the fold always fits */
    bool folded = debt != 0 && append(c, &fold, NULL) == 0;
    c->folding = false;
    unsigned char hdr[HDR], *p = hdr;
    *p++ = MAGIC;
    if (c->pending_drops) {
        *p++ = TAG_DROPPED;
        p = put_uvarint(p, c->pending_drops);
    }
    size_t hlen = (size_t)(p - hdr);
    memcpy(c->buf + HDR - hlen, hdr, hlen);
    int r = transmit(c, c->buf + HDR - hlen, hlen + c->len, wait_ms);
    if (r != 0 && (keep == KEEP_ALWAYS || (keep == KEEP_IF_FULL && r == -EAGAIN))) {
        c->len = len;   /* take the debt out again: the datagram stays pending as it was */
        c->nseries = nseries;
        c->nslots = nslots;
        return r;
    }
    if (r == 0) {
        c->pending_drops = 0;
        c->stalled = false;
        c->active_debt -= folded ? debt : 0;
        c->stats.sent_datagrams++;
        c->stats.sent_samples += c->pending_samples;
        c->stats.resent_adds += folded;
    } else {
        /* The transfer adds of a lost datagram are not lost: they are resent later. */
        c->pending_drops++;
        c->active_debt += c->active_pending;
        if (c->active_debt)
            pthread_cond_signal(&c->wake);   /* the flusher delivers it if no call does */
        c->stats.dropped_datagrams++;
        c->stats.dropped_samples += c->pending_samples - c->kept_pending;
        c->stats.kept_samples += c->kept_pending;
        if (r == -EAGAIN && wait_ms > 0 && c->mode == P2PM_BUFFERED)
            c->stalled = true;   /* the sidecar is stopped or stuck: calls stop waiting */
    }
    reset_pending(c);
    return r;
}

/* ---- The flusher thread (P2PM_BUFFERED) ---- */

static void *flusher_main(void *arg)
{
    p2pm_client *c = arg;
    pthread_mutex_lock(&c->lock);
    while (!c->stopping) {
        struct timespec now = now_mono();
        if (c->len && !c->batch_depth) {
            struct timespec due = plus_ms(c->first_at, P2PM_LINGER_MS);
            if (ms_between(&now, &due) > 0) {
                pthread_cond_timedwait(&c->wake, &c->lock, &due);
                continue;
            }
            if (send_pending(c, 0, KEEP_IF_FULL) == -EAGAIN) {
                /* The queue is full: keep the samples, wait for room without the lock (callers
                 * go on recording; one whose samples do not fit waits for room itself). */
                struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
                pthread_mutex_unlock(&c->lock);
                poll(&pfd, 1, P2PM_LINGER_MS);
                pthread_mutex_lock(&c->lock);
            }
            continue;
        }
        if (c->active_debt && !c->len) {   /* a transfer's +-1 waits for a datagram of its own */
            struct timespec due = plus_ms(c->debt_try, P2PM_RECONNECT_MS);
            if (ms_between(&now, &due) > 0) {
                pthread_cond_timedwait(&c->wake, &c->lock, &due);
                continue;
            }
            c->debt_try = now;
            send_pending(c, 0, KEEP_ALWAYS);
            continue;
        }
        pthread_cond_wait(&c->wake, &c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Starts the flusher thread (at open; in a forked child at its first buffered call), with every
 * signal blocked so that signals go to the application's threads. Called with the lock held or
 * before the client is shared. */
static int start_flusher(p2pm_client *c)
{
    pthread_attr_t attr;
    sigset_t all, old;
    int r = pthread_attr_init(&attr);
    if (r)
        return -r;
    pthread_attr_setstacksize(&attr, 256 * 1024);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = pthread_create(&c->flusher, &attr, flusher_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r)
        return -r;
    c->flusher_running = true;
    return 0;
}

/* After samples were appended: sends at once outside P2PM_BUFFERED mode (and outside batches);
 * in P2PM_BUFFERED mode wakes the flusher when the pending datagram just started. */
static int settle(p2pm_client *c, bool was_empty)
{
    if (c->batch_depth)
        return 0;
    if (c->mode != P2PM_BUFFERED)
        return send_pending(c, call_wait_ms(c), DROP);
    if (was_empty) {
        c->first_at = now_mono();
        if (!c->flusher_running && !c->stopping)
            start_flusher(c);   /* a forked child's first call (when it fails: flush/close/exit send) */
        pthread_cond_signal(&c->wake);
    }
    return 0;
}

/* Appends samples that must travel in one datagram, sending the pending datagram first if they
 * do not fit after it (its failure is counted, not returned: it is not about these samples), then
 * settles them. active_delta: the p2p.transfers.active add among them (the transfer guard), which
 * is never lost. Called with the lock held. */
static int add_group(p2pm_client *c, const struct sample *s, size_t n, int active_delta)
{
    size_t len;
    for (;;) {
        size_t i = 0;
        unsigned nseries = c->nseries, nslots = c->nslots;
        len = c->len;
        while (i < n && append(c, &s[i], NULL) == 0)
            i++;
        if (i == n)
            break;
        c->len = len;              /* roll back the part of the group already appended */
        c->nseries = nseries;
        c->nslots = nslots;
        if (len == 0)
            return -EMSGSIZE;      /* does not fit even in an empty datagram */
        send_pending(c, call_wait_ms(c), DROP);   /* then try again in an empty datagram */
    }
    c->pending_samples += n;
    if (active_delta) {
        c->active_pending += active_delta;
        c->kept_pending++;
    }
    return settle(c, len == 0);
}

/* ---- Clients ---- */

static _Atomic(p2pm_client *) default_client;
static pthread_mutex_t default_lock = PTHREAD_MUTEX_INITIALIZER;

/* Every open client, for the exit flush and fork (lock order: registry_lock, then clients). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static p2pm_client *registry;
static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

/* Sends what is pending and, best effort, the transfer debt; waits for room like a call. */
static void flush_locked(p2pm_client *c)
{
    send_pending(c, call_wait_ms(c), DROP);
    if (c->active_debt)
        send_pending(c, call_wait_ms(c), KEEP_ALWAYS);
}

static void flush_all_at_exit(void)
{
    pthread_mutex_lock(&registry_lock);
    for (p2pm_client *c = registry; c; c = c->next) {
        pthread_mutex_lock(&c->lock);
        flush_locked(c);
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* fork(): no client is in the middle of a call while the process is copied. */
static void before_fork(void)
{
    pthread_mutex_lock(&registry_lock);
    for (p2pm_client *c = registry; c; c = c->next)
        pthread_mutex_lock(&c->lock);
}

static void after_fork_parent(void)
{
    for (p2pm_client *c = registry; c; c = c->next)
        pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&registry_lock);
}

/* The child starts with nothing pending: the parent sends its own samples, drop reports and
 * transfer debt. Its flusher does not exist here; the child's first buffered call starts one. */
static void after_fork_child(void)
{
    for (p2pm_client *c = registry; c; c = c->next) {
        reset_pending(c);
        c->pending_drops = 0;
        c->active_debt = 0;
        c->flusher_running = false;
        /* The parent's flusher may have been waiting on it: start it afresh (not destroyed, as
         * destroying a condition with waiters blocks). */
        memset(&c->wake, 0, sizeof c->wake);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&c->wake, &ca);
        pthread_condattr_destroy(&ca);
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void install_hooks(void)
{
    atexit(flush_all_at_exit);
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

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
    c->mode = P2PM_BUFFERED;
    c->wait_ms = P2PM_SEND_WAIT_MS;
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
    pthread_condattr_t ca;
    int r = pthread_mutex_init(&c->lock, NULL);
    if (r == 0 && (r = pthread_condattr_init(&ca)) == 0) {
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        r = pthread_cond_init(&c->wake, &ca);
        pthread_condattr_destroy(&ca);
        if (r)
            pthread_mutex_destroy(&c->lock);
    } else if (r == 0) {
        pthread_mutex_destroy(&c->lock);
    }
    if (r == 0 && (r = -start_flusher(c)) != 0) {
        pthread_cond_destroy(&c->wake);
        pthread_mutex_destroy(&c->lock);
    }
    if (r != 0) {
        close(c->fd);
        errno = r;
        return NULL;
    }
    reconnect(c);   /* an absent sidecar is fine: sends connect later */
    pthread_once(&hooks_once, install_hooks);
    pthread_mutex_lock(&registry_lock);
    c->next = registry;
    registry = c;
    pthread_mutex_unlock(&registry_lock);
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
    pthread_mutex_lock(&registry_lock);
    for (p2pm_client **p = &registry; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    pthread_cond_signal(&c->wake);
    bool join = c->flusher_running;
    pthread_mutex_unlock(&c->lock);
    if (join)
        pthread_join(c->flusher, NULL);
    pthread_mutex_lock(&c->lock);
    flush_locked(c);
    pthread_mutex_unlock(&c->lock);
    pthread_cond_destroy(&c->wake);
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
    uint64_t n = c->stats.dropped_datagrams;
    pthread_mutex_unlock(&c->lock);
    return n;
}

int p2pm_get_stats(p2pm_client *c, p2pm_stats *out)
{
    int r = out ? resolve(&c) : -EINVAL;
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    *out = c->stats;
    out->buffered_samples = c->pending_samples;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int p2pm_set_mode(p2pm_client *c, p2pm_mode mode, int timeout_ms)
{
    if ((mode != P2PM_BUFFERED && mode != P2PM_IMMEDIATE && mode != P2PM_BLOCKING) ||
        timeout_ms < 0)
        return -EINVAL;
    int r = resolve(&c);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    if (!c->batch_depth)
        send_pending(c, call_wait_ms(c), DROP);
    c->mode = mode;
    c->wait_ms = mode == P2PM_IMMEDIATE ? 0 : timeout_ms;
    c->stalled = false;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

/* ---- Samples and batches ---- */

/* Validates the samples of one call, then adds them as one group (see add_group()). */
static int submit_group(p2pm_client *c, const struct sample *s, size_t n, int active_delta)
{
    int r = resolve(&c);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = validate(&s[i]);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    r = add_group(c, s, n, active_delta);
    pthread_mutex_unlock(&c->lock);
    return r;
}

static int submit(p2pm_client *c, const struct sample *s, size_t n)
{
    return submit_group(c, s, n, 0);
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
    pthread_mutex_lock(&c->lock);        /* generation changes under the lock */
    h->generation = c->generation - 1;   /* no index known yet */
    pthread_mutex_unlock(&c->lock);
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
    int r;
    pthread_mutex_lock(&c->lock);
    bool was_empty = c->len == 0;
    if (h->generation == c->generation && h->index < c->nseries && append_indexed(c, s, h->index) == 0) {
        c->pending_samples++;
        r = settle(c, was_empty);
    } else {
        unsigned index;
        r = append(c, s, &index);
        if (r == -EMSGSIZE && !was_empty) {   /* the pending datagram is full: send it, start anew */
            send_pending(c, call_wait_ms(c), DROP);
            was_empty = true;
            r = append(c, s, &index);
        }
        if (r == 0) {
            h->generation = c->generation;
            h->index = index;
            c->pending_samples++;
            r = settle(c, was_empty);
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
        r = send_pending(c, call_wait_ms(c), DROP);
    pthread_mutex_unlock(&c->lock);
    return r;
}

int p2pm_flush(p2pm_client *c)
{
    int r = resolve(&c);
    if (r)
        return r;
    pthread_mutex_lock(&c->lock);
    r = send_pending(c, call_wait_ms(c), DROP);
    if (c->active_debt)
        send_pending(c, 0, KEEP_ALWAYS);
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* ---- P2P helpers ---- */

/* A helper's label list: its own label (if any) followed by the caller's extra labels. */
struct label_list {
    p2pm_label l[MAX_LABELS];
    size_t n;
};

/* Fills out; -EINVAL when the lists together exceed MAX_LABELS (or extra is NULL with n > 0). */
static int join_labels(struct label_list *out, const char *own_name, const char *own_value,
                       const p2pm_label *extra, size_t n_extra)
{
    out->n = 0;
    if (own_name)
        out->l[out->n++] = (p2pm_label){ own_name, own_value };
    if (n_extra > MAX_LABELS - out->n || (n_extra && !extra))
        return -EINVAL;
    for (size_t i = 0; i < n_extra; i++)
        out->l[out->n++] = extra[i];
    return 0;
}

int p2pm_record_image_import_labels(p2pm_client *c, const char *artifact_type, bool success,
                                    uint64_t size_bytes, const p2pm_label *labels, size_t n_labels)
{
    struct label_list l;
    if (join_labels(&l, "artifact_type", artifact_type, labels, n_labels))
        return -EINVAL;
    struct sample s[2] = { SAMPLE_U64("p2p.image.imports.total", l.l, l.n, 1) };
    if (!success)
        s[1] = SAMPLE_U64("p2p.image.imports.failed", l.l, l.n, 1);
    else
        s[1] = SAMPLE_U64("p2p.bytes_transferred.total", l.l, l.n, size_bytes);
    return submit(c, s, success && size_bytes == 0 ? 1 : 2);
}

int p2pm_record_image_import(p2pm_client *c, const char *artifact_type, bool success,
                             uint64_t size_bytes)
{
    return p2pm_record_image_import_labels(c, artifact_type, success, size_bytes, NULL, 0);
}

int p2pm_record_image_download_labels(p2pm_client *c, const char *image_id, bool success,
                                      double duration_secs, const p2pm_label *labels,
                                      size_t n_labels)
{
    (void)image_id;   /* not a label: one series per image would be unbounded */
    struct label_list l;
    if (join_labels(&l, NULL, NULL, labels, n_labels))
        return -EINVAL;
    struct sample s[3] = {
        SAMPLE_U64("p2p.image.downloads.total", l.l, l.n, 1),
        SAMPLE(KIND_HISTOGRAM, "p2p.transfer.duration", l.l, l.n, duration_secs),
        SAMPLE_U64("p2p.image.downloads.failed", l.l, l.n, 1),
    };
    if (!success) {   /* order of the seed: total, failed, duration */
        struct sample h = s[1];
        s[1] = s[2];
        s[2] = h;
    }
    return submit(c, s, success ? 2 : 3);
}

int p2pm_record_image_download(p2pm_client *c, const char *image_id, bool success,
                               double duration_secs)
{
    return p2pm_record_image_download_labels(c, image_id, success, duration_secs, NULL, 0);
}

/* One chunk: its counters with the extra labels, and its hash in the unlabeled distinct count. */
static int record_chunk(p2pm_client *c, uint64_t chunk_size, bool deduplicated,
                        const char *chunk_hash, const p2pm_label *labels, size_t n_labels)
{
    struct label_list l;
    if (join_labels(&l, NULL, NULL, labels, n_labels))
        return -EINVAL;
    struct sample s[3] = {
        SAMPLE_U64("p2p.chunks_transferred.total", l.l, l.n, 1),
        SAMPLE_U64("p2p.bytes_transferred.total", l.l, l.n, chunk_size),
    };
    size_t n = deduplicated ? 1 : 2;
    if (deduplicated)
        s[0] = SAMPLE_U64("p2p.chunks_deduplicated.total", l.l, l.n, 1);
    if (chunk_hash)
        s[n++] = SAMPLE_KEY(KIND_DISTINCT, "p2p.chunks.unique", NULL, 0, chunk_hash,
                            strnlen(chunk_hash, MAX_KEY + 1));
    return submit(c, s, n);
}

int p2pm_record_chunk_transfer(p2pm_client *c, uint64_t chunk_size, bool deduplicated)
{
    return record_chunk(c, chunk_size, deduplicated, NULL, NULL, 0);
}

int p2pm_record_chunk_transfer_labels(p2pm_client *c, uint64_t chunk_size, bool deduplicated,
                                      const p2pm_label *labels, size_t n_labels)
{
    return record_chunk(c, chunk_size, deduplicated, NULL, labels, n_labels);
}

int p2pm_record_chunk_transfer_hash(p2pm_client *c, uint64_t chunk_size, bool deduplicated,
                                    const char *chunk_hash)
{
    return record_chunk(c, chunk_size, deduplicated, chunk_hash, NULL, 0);
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
    p2pm_client *resolved = c;
    if ((t.err = resolve(&resolved)) != 0) {   /* no client: no +1 to answer */
        t.active = 0;
        return t;
    }
    /* From here the +1 is in the client whatever the send does: a dropped +1 is kept and
     * delivered later, so the transfer is active and its end must send the -1. */
    struct sample s = SAMPLE(KIND_GAUGE_ADD, "p2p.transfers.active", NULL, 0, 1);
    t.err = submit_group(resolved, &s, 1, +1);
    return t;
}

int p2pm_transfer_end_labels(p2pm_transfer *t, const p2pm_label *labels, size_t n_labels)
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
        SAMPLE(KIND_HISTOGRAM, "p2p.transfer.duration", labels, n_labels, secs < 0 ? 0 : secs),
    };
    int r = submit_group(t->client, s, 2, -1);
    if (r == -EINVAL || r == -EMSGSIZE)   /* bad labels: the -1 alone, so it cannot stick */
        submit_group(t->client, s, 1, -1);
    return r;
}

int p2pm_transfer_end(p2pm_transfer *t)
{
    return p2pm_transfer_end_labels(t, NULL, 0);
}
