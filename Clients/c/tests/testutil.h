/*
 * testutil.h - helpers of the C client's tests: a receiver socket standing in for the sidecar,
 * and a small independent decoder of protocol v1 datagrams (PROTOCOL.md section 1).
 */
#ifndef P2PM_TESTUTIL_H
#define P2PM_TESTUTIL_H

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "p2pmetrics.h"

static int test_failures;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            test_failures++;                                                              \
        }                                                                                 \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                \
    do {                                                                                  \
        long long a_ = (long long)(a), b_ = (long long)(b);                               \
        if (a_ != b_) {                                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__,    \
                    __LINE__, #a, #b, a_, b_);                                            \
            test_failures++;                                                              \
        }                                                                                 \
    } while (0)

#define REQUIRE(cond)                                                                     \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s (errno %d)\n", __FILE__, __LINE__,  \
                    #cond, errno);                                                        \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* A bound AF_UNIX datagram socket in a fresh temporary folder: the stand-in sidecar. */
struct receiver {
    char dir[64];
    char path[108];
    int fd;
};

static inline void receiver_bind(struct receiver *r)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    r->fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    REQUIRE(r->fd >= 0);
    strcpy(a.sun_path, r->path);
    REQUIRE(bind(r->fd, (struct sockaddr *)&a, sizeof a) == 0);
}

/* Creates the folder and its socket path; binds the socket unless bind_now is 0. */
static inline void receiver_open(struct receiver *r, int bind_now)
{
    strcpy(r->dir, "/tmp/p2pm-test-XXXXXX");
    REQUIRE(mkdtemp(r->dir) != NULL);
    snprintf(r->path, sizeof r->path, "%s/ingest.sock", r->dir);
    r->fd = -1;
    if (bind_now)
        receiver_bind(r);
}

/* Closes and unlinks the socket, keeping the folder (to bind again later). */
static inline void receiver_unbind(struct receiver *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    unlink(r->path);
}

static inline void receiver_close(struct receiver *r)
{
    receiver_unbind(r);
    rmdir(r->dir);
}

/* Receives one datagram, waiting at most timeout_ms; returns its length or -1 on timeout. */
static inline ssize_t receiver_recv(struct receiver *r, unsigned char *buf, size_t cap,
                                     int timeout_ms)
{
    struct pollfd p = { .fd = r->fd, .events = POLLIN };
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    return recv(r->fd, buf, cap, MSG_DONTWAIT);
}

/* Receives and discards every queued datagram; returns how many there were. */
static inline int receiver_drain(struct receiver *r)
{
    unsigned char buf[65536];
    int n = 0;
    while (recv(r->fd, buf, sizeof buf, MSG_DONTWAIT) >= 0)
        n++;
    return n;
}

static inline void to_hex(const unsigned char *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
    out[2 * n] = 0;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ---- A minimal decoder, independent of the encoder under test ---- */

struct dec_sample {
    int kind;            /* 1 counter add, 2 gauge set, 3 gauge add, 4 histogram observe */
    int form;            /* 0 uvarint, 1 svarint, 2 f64 */
    char key[320];       /* name{l1=v1,l2=v2} (or just name), truncated to 300 bytes */
    uint64_t u;          /* form 0 */
    double v;            /* value as a double (all forms) */
};

struct decoded {
    uint64_t dropped;    /* sum of dropped records */
    int has_dropped_first;
    size_t n;
    struct dec_sample s[4096];
};

static inline void decoded_reset(struct decoded *d)
{
    d->dropped = 0;
    d->has_dropped_first = 0;
    d->n = 0;
}

static inline int dec_uvarint(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end)
            return -1;
        unsigned char b = *(*p)++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

static inline int dec_string(const unsigned char **p, const unsigned char *end, char *out,
                             size_t cap,
                      size_t *len)
{
    uint64_t n;
    if (dec_uvarint(p, end, &n) < 0 || n > (uint64_t)(end - *p))
        return -1;
    size_t k = n < cap ? (size_t)n : cap - 1;
    memcpy(out, *p, k);
    out[k] = 0;
    *p += n;
    *len = k;
    return 0;
}

static inline void append_key(char *key, const char *s)
{
    size_t n = strlen(key), k = strlen(s);
    if (k > 300 - n)
        k = n < 300 ? 300 - n : 0;
    memcpy(key + n, s, k);
    key[n + k] = 0;
}

/* Appends the samples of one datagram to d. Returns 0, or -1 when it is malformed. */
static inline int decode(const unsigned char *buf, size_t n, struct decoded *d)
{
    static char series[4096][320];
    size_t nseries = 0;
    const unsigned char *p = buf, *end = buf + n;
    if (n < 2 || *p++ != 0xF5)
        return -1;
    if (*p == 0x02)
        d->has_dropped_first = 1;
    while (p < end) {
        unsigned tag = *p++;
        uint64_t x;
        if (tag == 0x01) {
            if (nseries >= 4096)
                return -1;
            char *key = series[nseries++], tmp[1100];
            size_t len, kl, cnt;
            uint64_t labels;
            if (dec_string(&p, end, key, 200, &kl) < 0 || dec_uvarint(&p, end, &labels) < 0)
                return -1;
            for (cnt = 0; cnt < labels; cnt++) {
                append_key(key, cnt ? "," : "{");
                if (dec_string(&p, end, tmp, sizeof tmp, &len) < 0)
                    return -1;
                append_key(key, tmp);
                append_key(key, "=");
                if (dec_string(&p, end, tmp, sizeof tmp, &len) < 0)
                    return -1;
                append_key(key, tmp);
            }
            if (labels)
                append_key(key, "}");
        } else if (tag == 0x02) {
            if (dec_uvarint(&p, end, &x) < 0)
                return -1;
            d->dropped += x;
        } else if ((tag >> 4) >= 1 && (tag >> 4) <= 4 && (tag & 15) <= 2) {
            struct dec_sample *s = &d->s[d->n];
            if (d->n >= sizeof d->s / sizeof d->s[0] || dec_uvarint(&p, end, &x) < 0 ||
                x >= nseries)
                return -1;
            s->kind = (int)(tag >> 4);
            s->form = (int)(tag & 15);
            strcpy(s->key, series[x]);
            if (s->form == 2) {
                uint64_t bits = 0;
                if (end - p < 8)
                    return -1;
                for (int i = 0; i < 8; i++)
                    bits |= (uint64_t)p[i] << (8 * i);
                p += 8;
                memcpy(&s->v, &bits, 8);
            } else {
                if (dec_uvarint(&p, end, &s->u) < 0)
                    return -1;
                s->v = s->form == 0 ? (double)s->u
                                    : (s->u & 1) ? -(double)(s->u >> 1) - 1 : (double)(s->u >> 1);
            }
            d->n++;
        } else {
            return -1;
        }
    }
    return 0;
}

#endif /* P2PM_TESTUTIL_H */
