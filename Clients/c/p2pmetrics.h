/*
 * p2pmetrics.h - C client of p2pmetricsd, the metrics sidecar of p2p VM image clusters.
 *
 * One header, one C11 source file, libc (and pthread, part of glibc) only. Samples are encoded in
 * the binary wire protocol v1 (Clients/PROTOCOL.md) and sent as datagrams to the sidecar's Unix
 * datagram socket. Nothing here prints, aborts or allocates per call (p2pm_open() allocates the
 * client and starts its flusher thread); no call blocks longer than the bounds stated below.
 *
 * Socket path: the path given to p2pm_open(); with NULL, the value of the environment variable
 * P2PM_SOCKET when it is set and non-empty, else P2PM_DEFAULT_SOCKET
 * ("/run/p2pmetricsd/ingest.sock").
 *
 * Clients: every function taking a p2pm_client * accepts NULL, meaning the process-wide default
 * client, opened lazily (with a NULL path) on first use and kept until the process exits. A
 * client is thread-safe: any number of threads may use one client concurrently.
 *
 * Sending (p2pm_set_mode()): by default (P2PM_BUFFERED) calls append their samples to the
 * client's pending datagram (at most P2PM_MAX_DATAGRAM bytes, about 3 bytes per sample of a
 * series already in it) and return. The datagram is sent when the next call does not fit, and at
 * the latest P2PM_LINGER_MS milliseconds after its first sample by the client's flusher thread
 * (started by p2pm_open()), so a recorded sample reaches the sidecar within P2PM_LINGER_MS while
 * the sidecar keeps up. When the sidecar's queue is full (the kernel's default
 * net.unix.max_dgram_qlen is only 10), the flusher keeps the samples and tries again as soon as
 * there is room (poll(POLLOUT)); a call whose samples do not fit waits for room up to
 * P2PM_SEND_WAIT_MS (back-pressure: the sender slows down to what the sidecar absorbs) before the
 * full datagram is dropped. After such a timed-out wait (a stopped or stuck sidecar) calls stop
 * waiting until a datagram gets through again. Bounds, whatever the sidecar does (absent,
 * stopped with SIGSTOP, gone): a call returns within P2PM_SEND_WAIT_MS of its own wait plus at
 * most one other thread's wait it queues behind on the client's lock (< 2 x P2PM_SEND_WAIT_MS);
 * an absent sidecar never makes a call wait.
 *   P2PM_IMMEDIATE: every call is sent at once as its own datagram, never waiting (-EAGAIN when
 *   the queue is full: dropped and counted); the return value is the fate of the call's samples.
 *   P2PM_BLOCKING: every call is sent at once and waits up to the mode's timeout for room (each
 *   time: a stopped sidecar costs every call its timeout, plus the waits of the threads ahead of
 *   it on the client's lock).
 * Between p2pm_batch_begin() and p2pm_batch_end() samples are packed into shared datagrams in
 * every mode and the flusher leaves them alone: full datagrams are sent, and p2pm_batch_end() or
 * p2pm_flush() send the rest. The helpers (p2pm_record_*, the transfer guard) always put all the
 * samples of one call into the same datagram, so they are applied atomically.
 *
 * Nothing is lost on the way out: p2pm_close(), p2pm_flush() and, for every client still open, a
 * normal exit (atexit) send what is pending (waiting for room like a call). After fork() the
 * child starts with an empty pending datagram (the parent keeps and sends its own: nothing is
 * sent twice) and its own flusher, started at its first call. exec() and _exit() skip all this:
 * call p2pm_flush() first.
 *
 * Drops: a datagram is dropped only when it is really lost: the sidecar is absent (connect or
 * send fails), or its queue stayed full for the whole wait (or at once in P2PM_IMMEDIATE mode).
 * Dropped datagrams and the samples in them are counted (p2pm_get_stats()); the count of drops
 * not yet reported travels in-band, as the first record of the next datagram that is sent
 * successfully, so the sidecar exposes it as p2pmetricsd_client_dropped_datagrams_total. While
 * the sidecar is absent, the client tries to connect again at most once every P2PM_RECONNECT_MS
 * milliseconds (CLOCK_MONOTONIC).
 *
 * Errors: functions returning int return 0 on success or a negative errno value:
 *   -EINVAL        invalid metric name, label name or value, label value, label list or value
 *                  (PROTOCOL.md sections 1.3-1.5); nothing is sent and nothing is counted
 *   -EMSGSIZE      the samples of this call cannot fit in one datagram; nothing is sent
 *   -EAGAIN        the socket buffer was full: the datagram was dropped (and counted)
 *   -ENOENT, -ECONNREFUSED, other connect()/send() errors
 *                  the sidecar is absent: the datagram was dropped (and counted)
 *   -ENOMEM etc.   the default client could not be opened (errors of p2pm_open())
 * In P2PM_IMMEDIATE and P2PM_BLOCKING modes the return value tells the fate of the call's own
 * samples, so retrying a call that returned -EAGAIN never duplicates anything. When samples are
 * buffered (P2PM_BUFFERED, batches) a call returns 0 once its samples are in the pending
 * datagram: a full datagram it had to send first is not its samples, and a failure of that send
 * is counted and reported in-band like any drop; p2pm_batch_end() and p2pm_flush() return the
 * error of the datagram they send.
 */
#ifndef P2PMETRICS_H
#define P2PMETRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define P2PM_VERSION "1.0.0"
/** Socket path used when neither a path nor $P2PM_SOCKET is given. */
#define P2PM_DEFAULT_SOCKET "/run/p2pmetricsd/ingest.sock"
/** Environment variable naming the socket path when p2pm_open() gets NULL. */
#define P2PM_SOCKET_ENV "P2PM_SOCKET"
/** Largest datagram the client sends, in bytes (drop report included). */
#define P2PM_MAX_DATAGRAM 8192
/** Minimum interval between two connection attempts to an absent sidecar, in milliseconds. */
#define P2PM_RECONNECT_MS 100
/** P2PM_BUFFERED: longest time a sample waits in the pending datagram, in milliseconds. */
#define P2PM_LINGER_MS 5
/** P2PM_BUFFERED: default longest wait of a call for room in the sidecar's queue, in ms. */
#define P2PM_SEND_WAIT_MS 50

/** How a client sends (p2pm_set_mode()); see "Sending" above. */
typedef enum {
    P2PM_BUFFERED = 0,   /* default: pending datagram, linger, bounded wait for room */
    P2PM_IMMEDIATE = 1,  /* one datagram per call, never waits, drops when the queue is full */
    P2PM_BLOCKING = 2,   /* one datagram per call, waits up to a timeout for room */
} p2pm_mode;

/** What a client did since it was opened (p2pm_get_stats()). */
typedef struct {
    uint64_t sent_datagrams;     /* datagrams the kernel accepted */
    uint64_t sent_samples;       /* samples recorded by calls that were in them */
    uint64_t dropped_datagrams;  /* datagrams lost (= p2pm_dropped()); reported in-band */
    uint64_t dropped_samples;    /* samples in them that are lost: exactly the samples lost */
    uint64_t kept_samples;       /* transfer +-1s in lost datagrams: kept, resent as their sum */
    uint64_t resent_adds;        /* p2p.transfers.active adds sent for kept samples */
    uint64_t buffered_samples;   /* samples in the pending datagram now */
    uint64_t waits;              /* sends that found the queue full and waited for room */
} p2pm_stats;
/* Samples recorded = sent_samples + dropped_samples + kept_samples + buffered_samples;
 * samples the sidecar applies = sent_samples + resent_adds. */

/** A connection to the sidecar: opaque, one allocation made by p2pm_open(). */
typedef struct p2pm_client p2pm_client;

/** One label. name: 1-100 bytes of [A-Za-z_][A-Za-z0-9_]*, not starting with "__";
 *  value: 0-1024 bytes of valid UTF-8. At most 16 labels per sample, no repeated names.
 *  Label order matters for packing only (the sidecar treats any order as the same series). */
typedef struct {
    const char *name;
    const char *value;
} p2pm_label;

/* ---- Clients ---------------------------------------------------------------------------- */

/**
 * Opens a client for the socket at socket_path (NULL: $P2PM_SOCKET, else P2PM_DEFAULT_SOCKET), in
 * P2PM_BUFFERED mode. Allocates the client once and starts its flusher thread (all signals
 * blocked in it). An absent sidecar is not an error: the client connects when the socket
 * appears. Returns NULL with errno set on failure (ENOMEM, ENAMETOOLONG when the path does not
 * fit in a sockaddr_un, EINVAL for an empty path, or an error of socket() or pthread_create()).
 */
p2pm_client *p2pm_open(const char *socket_path);

/** Size in bytes of the memory p2pm_open_in() needs. */
size_t p2pm_client_size(void);

/**
 * Like p2pm_open() (flusher thread included), but builds the client in caller-provided memory of at least
 * p2pm_client_size() bytes, aligned like max_align_t (e.g. from malloc, or a static buffer
 * declared with _Alignas(max_align_t)). No allocation at all. Returns mem, or NULL with errno set
 * (EINVAL when mem is NULL or size too small). Close it with p2pm_close(), then free mem.
 */
p2pm_client *p2pm_open_in(void *mem, size_t size, const char *socket_path);

/**
 * Stops the flusher, sends what is pending (waiting for room like a call), closes the socket and
 * frees the client (if p2pm_open() allocated it). No other thread may use the client during or
 * after this call. NULL does nothing: the default client lives until the process exits, when the
 * exit flush sends what it holds.
 */
void p2pm_close(p2pm_client *c);

/**
 * Total number of datagrams this client dropped since it was opened (reported or not). 0 for a
 * default client (NULL) that was never opened.
 */
uint64_t p2pm_dropped(p2pm_client *c);

/** Fills *out with the client's counters. Returns 0, -EINVAL when out is NULL, or an error of
 *  the default client. */
int p2pm_get_stats(p2pm_client *c, p2pm_stats *out);

/**
 * Sets how the client sends (see "Sending" above), sending what is pending first. timeout_ms:
 * P2PM_BUFFERED, the longest wait of a call for room (default P2PM_SEND_WAIT_MS; 0: drop at
 * once); P2PM_BLOCKING, the longest wait of each call; ignored for P2PM_IMMEDIATE. Returns 0,
 * -EINVAL for an unknown mode or a negative timeout, or an error of the default client.
 */
int p2pm_set_mode(p2pm_client *c, p2pm_mode mode, int timeout_ms);

/* ---- Samples ---------------------------------------------------------------------------- */
/* name: 1-200 bytes of [A-Za-z_:][A-Za-z0-9_:.]*, whose exposed form (dots replaced by
 * underscores) does not start with "p2pmetricsd_". labels may be NULL when n_labels is 0. */

/** Adds value (finite, >= 0) to the counter name{labels}. */
int p2pm_counter_add(p2pm_client *c, const char *name, double value,
                     const p2pm_label *labels, size_t n_labels);

/** Adds an exact 64-bit integer to the counter name{labels} (byte counts past 2^53). */
int p2pm_counter_add_u64(p2pm_client *c, const char *name, uint64_t value,
                         const p2pm_label *labels, size_t n_labels);

/** Sets the gauge name{labels} to value (any value, NaN and infinities included). */
int p2pm_gauge_set(p2pm_client *c, const char *name, double value,
                   const p2pm_label *labels, size_t n_labels);

/** Adds delta (finite, may be negative) to the gauge name{labels} (an up-down counter). */
int p2pm_gauge_add(p2pm_client *c, const char *name, double delta,
                   const p2pm_label *labels, size_t n_labels);

/** Records one observation of value (finite) into the histogram name{labels}; a histogram may
 *  not have a label named "le". */
int p2pm_histogram_observe(p2pm_client *c, const char *name, double value,
                           const p2pm_label *labels, size_t n_labels);

/** Adds key (key_len bytes, 0-1024, any bytes; may be NULL when key_len is 0) to the distinct
 *  count name{labels}: the sidecar exposes the estimated number of distinct keys as a gauge
 *  (HyperLogLog, about 1.6% standard error, fixed memory). */
int p2pm_distinct_add(p2pm_client *c, const char *name, const void *key, size_t key_len,
                      const p2pm_label *labels, size_t n_labels);

/** Counts one occurrence of key (1-128 bytes of UTF-8, NUL-terminated) in the top-K sketch
 *  name{labels}: the sidecar exposes the K most frequent keys as name{...,key="..."} with their
 *  counts, and name_error{...,key="..."} with each count's overestimation bound. A top-K metric
 *  may not have a label named "key". */
int p2pm_topk_add(p2pm_client *c, const char *name, const char *key,
                  const p2pm_label *labels, size_t n_labels);

/* ---- Series handles (the fast path) ------------------------------------------------------ */

/**
 * A series resolved once: its name and labels are validated when it is initialized, and while
 * its series record is in the client's pending datagram a sample through it costs only the
 * value's encoding (a few bytes) under the client's lock. For hot loops, together with batch
 * mode. Caller-owned (on the stack, in a struct, static): no allocation. The name and labels it
 * was initialized with must stay valid and unchanged while it is used. Any number of threads
 * may use one handle, like the client it belongs to.
 */
typedef struct {
    p2pm_client *client;
    const char *name;
    const p2pm_label *labels;
    size_t n_labels;
    bool histogram_ok;     /* no "le" label */
    uint64_t generation;   /* the client's pending datagram that index refers to */
    unsigned index;        /* series index in that datagram */
} p2pm_series;

/** Initializes h for name{labels} on client c (NULL: the default client). Returns 0, -EINVAL
 *  for an invalid name or label list (PROTOCOL.md 1.4), or an error of the default client. */
int p2pm_series_init(p2pm_series *h, p2pm_client *c, const char *name, const p2pm_label *labels,
                     size_t n_labels);

/** Like p2pm_counter_add() etc., for the series of h. Same return values and sending rules. */
int p2pm_series_counter_add(p2pm_series *h, double value);
int p2pm_series_counter_add_u64(p2pm_series *h, uint64_t value);
int p2pm_series_gauge_set(p2pm_series *h, double value);
int p2pm_series_gauge_add(p2pm_series *h, double delta);
int p2pm_series_observe(p2pm_series *h, double value);

/* ---- Batching --------------------------------------------------------------------------- */

/**
 * Starts batch mode: later samples, from any thread, are packed into shared datagrams instead of
 * being sent one call at a time. Calls nest; only the outermost p2pm_batch_end() ends the batch.
 * Returns 0, or an error of the default client.
 */
int p2pm_batch_begin(p2pm_client *c);

/** Ends batch mode (the outermost call sends what is pending, see p2pm_flush()). Returns 0 or
 *  the error of that send; -EINVAL without a matching p2pm_batch_begin(). */
int p2pm_batch_end(p2pm_client *c);

/** Sends the pending samples now, if any (waiting for room like a call), and tries to deliver
 *  kept transfer adds. Returns 0 (also when nothing was pending) or the send's error (the
 *  datagram was then dropped and counted). */
int p2pm_flush(p2pm_client *c);

/* ---- P2P helpers (the seed's metrics_otel functions, one datagram each) ------------------ */

/** p2p.image.imports.total{artifact_type} += 1; on failure p2p.image.imports.failed
 *  {artifact_type} += 1; on success with size_bytes > 0 p2p.bytes_transferred.total
 *  {artifact_type} += size_bytes. artifact_type: microvm, container, storepath, closure... */
int p2pm_record_image_import(p2pm_client *c, const char *artifact_type, bool success,
                             uint64_t size_bytes);

/** p2p.image.downloads.total += 1; on failure p2p.image.downloads.failed += 1;
 *  p2p.transfer.duration observes duration_secs (finite). image_id is not sent (may be NULL). */
int p2pm_record_image_download(p2pm_client *c, const char *image_id, bool success,
                               double duration_secs);

/** deduplicated: p2p.chunks_deduplicated.total += 1; else p2p.chunks_transferred.total += 1 and
 *  p2p.bytes_transferred.total += chunk_size (no labels). */
int p2pm_record_chunk_transfer(p2pm_client *c, uint64_t chunk_size, bool deduplicated);

/** As p2pm_record_chunk_transfer(), and, when chunk_hash is not NULL, adds it to the distinct
 *  count p2p.chunks.unique (unique chunks, to estimate storage needs), in the same datagram. */
int p2pm_record_chunk_transfer_hash(p2pm_client *c, uint64_t chunk_size, bool deduplicated,
                                    const char *chunk_hash);

/** Chunk popularity: counts one request of chunk_hash (1-128 bytes of UTF-8) in the top-K
 *  sketch p2p.chunks.requested. */
int p2pm_record_chunk_request(p2pm_client *c, const char *chunk_hash);

/* Helpers with extra labels: like the calls above, with labels added to every sample of the call
 * (e.g. {"peer", "node-7"}, the per-peer convention of the README). At most 15 extra labels
 * (16 with the helper's own); names may not repeat the helper's own label. */
int p2pm_record_image_import_labels(p2pm_client *c, const char *artifact_type, bool success,
                                    uint64_t size_bytes, const p2pm_label *labels, size_t n_labels);
int p2pm_record_image_download_labels(p2pm_client *c, const char *image_id, bool success,
                                      double duration_secs, const p2pm_label *labels,
                                      size_t n_labels);
int p2pm_record_chunk_transfer_labels(p2pm_client *c, uint64_t chunk_size, bool deduplicated,
                                      const p2pm_label *labels, size_t n_labels);

/** p2p.verification.success{verification_type} or p2p.verification.failed{verification_type}
 *  += 1. verification_type: nar_hash, chunk_hash... */
int p2pm_record_verification(p2pm_client *c, bool success, const char *verification_type);

/** p2p.cache.hits{cache_type} or p2p.cache.misses{cache_type} += 1. cache_type: chunk,
 *  vm_image... */
int p2pm_record_cache_access(p2pm_client *c, bool hit, const char *cache_type);

/** An active transfer, returned by value by p2pm_transfer_start(). */
typedef struct {
    p2pm_client *client;      /* the client given to p2pm_transfer_start() (NULL: default) */
    struct timespec start;    /* CLOCK_MONOTONIC time of the start */
    int active;               /* 1 until p2pm_transfer_end() */
    int err;                  /* result of recording the start's p2p.transfers.active += 1 */
} p2pm_transfer;

/**
 * Starts a transfer: p2p.transfers.active += 1, and notes the monotonic start time.
 * The active gauge cannot stick: a += 1 or -= 1 whose datagram is dropped (sidecar absent or
 * stopped) is kept by the client and added to the next datagram that is sent (or to a datagram of
 * its own, tried every P2PM_RECONNECT_MS by the flusher), so p2p.transfers.active always ends at
 * the number of transfers started and not ended, and never goes below zero. (A process that dies
 * is cleaned up by the sidecar, which withdraws its adds.)
 */
p2pm_transfer p2pm_transfer_start(p2pm_client *c);


/**
 * Ends a transfer, in one datagram: p2p.transfers.active -= 1 and p2p.transfer.duration observes
 * the seconds elapsed since the start. Ending a transfer again, or a zeroed p2pm_transfer, does
 * nothing and returns 0. Returns 0 or the error of the send: then the duration was dropped, and
 * the -= 1 is kept and delivered later (see p2pm_transfer_start()).
 */
int p2pm_transfer_end(p2pm_transfer *t);

/** Like p2pm_transfer_end(), with labels (e.g. {"peer", "node-7"}; not "le") on the
 *  p2p.transfer.duration observation. Invalid labels: the -= 1 is still sent, alone, and the
 *  call returns -EINVAL. */
int p2pm_transfer_end_labels(p2pm_transfer *t, const p2pm_label *labels, size_t n_labels);

#ifdef __cplusplus
}
#endif

#endif /* P2PMETRICS_H */
