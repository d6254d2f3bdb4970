//! Client of **p2pmetricsd**, the metrics sidecar of p2p VM image clusters.
//!
//! Standard library only. Samples are encoded in the binary wire protocol v1
//! (`Clients/PROTOCOL.md`) and sent as datagrams to the sidecar's Unix datagram socket; the
//! sidecar aggregates them and serves Prometheus `/metrics`.
//!
//! ```no_run
//! p2pmetrics::record_image_import("microvm", true, 1 << 30);
//! let _transfer = p2pmetrics::start_transfer(); // p2p.transfers.active -1 and the duration on drop
//! p2pmetrics::global().counter_add("jobs.done", 1, &[("queue", "fast")]).ok();
//! ```
//!
//! # Socket path
//! [`Client::open`] takes a path; [`Client::from_env`] (and [`global()`]) use `$P2PM_SOCKET` when
//! it is set and non-empty, else [`DEFAULT_SOCKET`].
//!
//! # Sending ([`Mode`])
//! By default ([`Mode::Buffered`]) a call appends its samples to the client's pending datagram
//! (at most [`MAX_DATAGRAM`] bytes, about 3 bytes per sample of a series already in it) and
//! returns. The datagram is sent when the next call does not fit, and at the latest [`LINGER`]
//! after its first sample by the client's flusher thread, so a recorded sample reaches the
//! sidecar within [`LINGER`] while the sidecar keeps up. When the sidecar's queue is full (the
//! kernel's default `net.unix.max_dgram_qlen` is only 10) the flusher keeps the samples and tries
//! again every millisecond; a call whose samples do not fit waits for room up to the mode's
//! `max_wait` (default [`SEND_WAIT`]; back-pressure: the sender slows down to what the sidecar
//! absorbs) before the full datagram is dropped. After such a timed-out wait (a stopped or stuck
//! sidecar) calls stop waiting until a datagram gets through again. **Bounds**, whatever the
//! sidecar does (absent, stopped with SIGSTOP, gone): a call waits at most its own wait
//! (`max_wait`) plus one other thread's wait it queues behind on the client's lock
//! (< 2 × `max_wait`, 100 ms by default; beyond that only CPU scheduling); an absent sidecar
//! never makes a call wait.
//! [`Mode::Immediate`]: every call is sent at once as its own datagram, never waiting (a full
//! queue drops it: [`Error::QueueFull`]). [`Mode::Blocking`]: every call is sent at once and
//! waits up to its timeout for room. Inside a [`Client::batch`] samples are packed into shared
//! datagrams in every mode and the flusher leaves them alone until the batch ends.
//! The helpers (`record_*`, the transfer guard) always put all the samples of one call into the
//! same datagram, so the sidecar applies them atomically.
//!
//! # Nothing lost on the way out
//! [`Client::flush`] and [`flush()`] send what is pending now. Dropping the last handle of a
//! [`Client`] flushes it. Rust has no `atexit`, and statics such as [`global()`] are never
//! dropped, so this crate registers one with the C library: on a normal exit — `main`
//! returning, or [`std::process::exit`] — every open client sends what is pending (waiting for
//! room like a call). An abort, a fatal signal or `libc::_exit` skip it: at most the last
//! [`LINGER`] of samples is lost then; call [`flush()`] first. A forked child must not use its
//! parent's clients (they belong to the parent, which sends them; the child's exit does not send
//! them twice): open a new [`Client`] in the child.
//!
//! # Drops
//! A datagram is dropped only when it is really lost: the sidecar is absent (connect or send
//! fails), or its queue stayed full for the whole wait (or at once in [`Mode::Immediate`]).
//! Dropped datagrams and the samples in them are counted ([`Client::stats`]); the count of drops
//! not yet reported travels in-band, as the first record of the next datagram sent
//! successfully, so the sidecar exposes it as `p2pmetricsd_client_dropped_datagrams_total`. While
//! the sidecar is absent, the client tries to connect at most once every [`RECONNECT`].
//!
//! # Errors
//! Calls return [`Error::Invalid`] (nothing is sent or counted) for a name, label or value the
//! protocol refuses, so the sidecar never rejects what this crate sends. In
//! [`Mode::Immediate`] and [`Mode::Blocking`] the result is the fate of the call's own samples,
//! so retrying a call that failed with [`Error::QueueFull`] never duplicates anything. Buffered
//! calls return `Ok` once their samples are in the pending datagram.

mod client;
mod encode;
mod series;
mod transfer;

pub use client::{Batch, Client, Mode, Stats};
pub use encode::{Labels, MAX_DATAGRAM};
pub use series::Series;
pub use transfer::TransferGuard;

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;
use std::time::Duration;

/// Socket path used when neither a path nor `$P2PM_SOCKET` is given.
pub const DEFAULT_SOCKET: &str = "/run/p2pmetricsd/ingest.sock";
/// Environment variable naming the socket path for [`Client::from_env`] and [`global()`].
pub const SOCKET_ENV: &str = "P2PM_SOCKET";
/// [`Mode::Buffered`]: longest time a sample waits in the pending datagram.
pub const LINGER: Duration = Duration::from_millis(5);
/// [`Mode::Buffered`]: default longest wait of a call for room in the sidecar's queue.
pub const SEND_WAIT: Duration = Duration::from_millis(50);
/// Minimum interval between two connection attempts to an absent sidecar.
pub const RECONNECT: Duration = Duration::from_millis(100);

/// Why a call's samples were not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A metric name, label or value the protocol refuses (PROTOCOL.md 1.3-1.5): nothing was sent
    /// and nothing counted. The text says what.
    Invalid(&'static str),
    /// The samples of this call cannot fit in one datagram: nothing was sent.
    TooLarge,
    /// The sidecar's queue stayed full: the datagram was dropped (and counted).
    QueueFull,
    /// The sidecar is absent (or another socket error): the datagram was dropped (and counted).
    Unavailable(std::io::ErrorKind),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(what) => write!(f, "invalid {what}"),
            Error::TooLarge => f.write_str("samples do not fit in one datagram"),
            Error::QueueFull => f.write_str("the sidecar's queue is full: datagram dropped"),
            Error::Unavailable(kind) => write!(f, "the sidecar is unavailable ({kind}): datagram dropped"),
        }
    }
}

impl std::error::Error for Error {}

/// The default client: set once to a leaked `Box` (a static is never dropped anyway), so that
/// `global()` is one atomic load after the first call (and builds with Debian's Rust 1.63).
static GLOBAL: AtomicPtr<Client> = AtomicPtr::new(std::ptr::null_mut());
static GLOBAL_INIT: Once = Once::new();

fn opened_global() -> Option<&'static Client> {
    // SAFETY: GLOBAL is null or points to a leaked Client that is never freed.
    unsafe { GLOBAL.load(Ordering::Acquire).as_ref() }
}

/// The process-wide default client, opened on first use with [`Client::from_env`] (falling back
/// to [`DEFAULT_SOCKET`] when `$P2PM_SOCKET` is not a usable path). It is flushed at a normal
/// exit (see the crate docs).
pub fn global() -> &'static Client {
    if let Some(client) = opened_global() {
        return client;
    }
    GLOBAL_INIT.call_once(|| {
        let client = Client::from_env().unwrap_or_else(|_| Client::unchecked(DEFAULT_SOCKET.as_ref()));
        GLOBAL.store(Box::into_raw(Box::new(client)), Ordering::Release);
    });
    opened_global().expect("the default client was just opened")
}

/// Sends what the default client has pending (see [`Client::flush`]); does nothing when it was
/// never used.
pub fn flush() -> Result<(), Error> {
    opened_global().map_or(Ok(()), Client::flush)
}

// ---- The seed's functions, on the default client -------------------------------------------
// Like the seed's metrics module they return nothing: a failure is counted in the client's
// stats (and reported in-band), an invalid label value is refused at the caller.

/// `p2p.image.imports.total{artifact_type}` += 1; on failure `p2p.image.imports.failed
/// {artifact_type}` += 1; on success with `size_bytes` > 0 `p2p.bytes_transferred.total
/// {artifact_type}` += `size_bytes`.
pub fn record_image_import(artifact_type: &str, success: bool, size_bytes: u64) {
    let _ = global().record_image_import(artifact_type, success, size_bytes);
}

/// `p2p.image.downloads.total` += 1; on failure `p2p.image.downloads.failed` += 1;
/// `p2p.transfer.duration` observes `duration`. `image_id` is not sent (one series per image
/// would be unbounded).
pub fn record_image_download(image_id: &str, success: bool, duration: Duration) {
    let _ = global().record_image_download(image_id, success, duration);
}

/// Deduplicated: `p2p.chunks_deduplicated.total` += 1; else `p2p.chunks_transferred.total` += 1
/// and `p2p.bytes_transferred.total` += `size_bytes`.
pub fn record_chunk_transfer(size_bytes: u64, deduplicated: bool) {
    let _ = global().record_chunk_transfer(size_bytes, deduplicated);
}

/// `p2p.verification.success{verification_type}` or `p2p.verification.failed{verification_type}`
/// += 1.
pub fn record_verification(success: bool, verification_type: &str) {
    let _ = global().record_verification(success, verification_type);
}

/// `p2p.cache.hits{cache_type}` or `p2p.cache.misses{cache_type}` += 1.
pub fn record_cache_access(hit: bool, cache_type: &str) {
    let _ = global().record_cache_access(hit, cache_type);
}

/// Starts a transfer: `p2p.transfers.active` += 1; the guard's drop (also during a panic unwind)
/// subtracts 1 and observes the elapsed seconds in `p2p.transfer.duration`.
pub fn start_transfer() -> TransferGuard<'static> {
    global().start_transfer()
}

/// [`record_image_import`] with extra labels on every sample (e.g. `&[("peer", "node-7")]`).
pub fn record_image_import_labels(artifact_type: &str, success: bool, size_bytes: u64, labels: Labels<'_>) {
    let _ = global().record_image_import_labels(artifact_type, success, size_bytes, labels);
}

/// [`record_image_download`] with extra labels on every sample.
pub fn record_image_download_labels(image_id: &str, success: bool, duration: Duration, labels: Labels<'_>) {
    let _ = global().record_image_download_labels(image_id, success, duration, labels);
}

/// [`record_chunk_transfer`] with extra labels on every sample.
pub fn record_chunk_transfer_labels(size_bytes: u64, deduplicated: bool, labels: Labels<'_>) {
    let _ = global().record_chunk_transfer_labels(size_bytes, deduplicated, labels);
}

/// [`start_transfer`] whose `p2p.transfer.duration` observation carries `labels` (not `le`).
pub fn start_transfer_labels<'a>(labels: Labels<'a>) -> TransferGuard<'a> {
    global().start_transfer_labels(labels)
}
