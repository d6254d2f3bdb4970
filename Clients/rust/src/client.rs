//! The client: a pending datagram under a lock, a flusher thread, and the socket to the sidecar.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::encode::{Datagram, Kind, LabelList, Labels, Sample, Value};
use crate::{Error, LINGER, RECONNECT, SEND_WAIT};

pub(crate) const ACTIVE_TRANSFERS: &str = "p2p.transfers.active";
pub(crate) const TRANSFER_DURATION: &str = "p2p.transfer.duration";
/// `sun_path` holds 108 bytes, the terminating NUL included.
const MAX_PATH: usize = 107;

/// How a client sends; see the crate docs ("Sending").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The default: a pending datagram sent when full or after [`crate::LINGER`]; a call whose
    /// samples do not fit waits up to `max_wait` for room (`Duration::ZERO`: drop at once).
    Buffered { max_wait: Duration },
    /// One datagram per call, never waiting: dropped (and counted) when the queue is full.
    Immediate,
    /// One datagram per call, waiting up to `timeout` for room — each time: a stopped sidecar
    /// costs every call its timeout (plus the waits of the threads ahead of it on the lock).
    Blocking { timeout: Duration },
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Buffered { max_wait: SEND_WAIT }
    }
}

/// What a client did since it was opened ([`Client::stats`]). Samples recorded =
/// `sent_samples + dropped_samples + kept_samples + buffered_samples`; samples the sidecar
/// applies = `sent_samples + resent_adds`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams the kernel accepted.
    pub sent_datagrams: u64,
    /// Samples recorded by calls that were in them.
    pub sent_samples: u64,
    /// Datagrams lost (= [`Client::dropped`]); reported in-band.
    pub dropped_datagrams: u64,
    /// Samples in them that are lost: exactly the samples lost.
    pub dropped_samples: u64,
    /// Transfer +1/-1s in lost datagrams: kept, and resent as their sum.
    pub kept_samples: u64,
    /// `p2p.transfers.active` adds sent for kept samples.
    pub resent_adds: u64,
    /// Samples in the pending datagram now.
    pub buffered_samples: u64,
    /// Sends that found the queue full and waited for room.
    pub waits: u64,
}

/// The socket to the sidecar, connected lazily and again after the sidecar went away.
struct Link {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    connected: bool,
    last_try: Option<Instant>,
    last_err: io::ErrorKind,
}

fn peer_gone(e: &io::Error) -> bool {
    const EDESTADDRREQ: i32 = 89;
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotConnected
            | io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
    ) || e.raw_os_error() == Some(EDESTADDRREQ)
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// One blocking send that waits up to `left` for room in the sidecar's queue (SO_SNDTIMEO on a
/// connected Unix datagram socket), then back to non-blocking.
fn send_waiting(socket: &UnixDatagram, data: &[u8], left: Duration) -> io::Result<usize> {
    socket.set_nonblocking(false)?;
    let result = socket
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .and_then(|()| socket.send(data));
    socket.set_nonblocking(true)?;
    result
}

impl Link {
    /// (Re)connects, at most once per [`RECONNECT`].
    fn reconnect(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if self.last_try.map_or(false, |t| now.duration_since(t) <= RECONNECT) {
            return Err(Error::Unavailable(self.last_err));
        }
        self.last_try = Some(now);
        let result = match &self.socket {
            Some(socket) => socket.connect(&self.path),
            None => UnixDatagram::unbound().and_then(|socket| {
                socket.set_nonblocking(true)?;
                let connected = socket.connect(&self.path);
                self.socket = Some(socket);
                connected
            }),
        };
        match result {
            Ok(()) => {
                self.connected = true;
                Ok(())
            }
            Err(e) => {
                self.last_err = e.kind();
                Err(Error::Unavailable(self.last_err))
            }
        }
    }

    /// Sends one datagram. When the sidecar's queue is full, waits up to `wait` for room before
    /// giving up with `QueueFull`. An absent sidecar fails at once.
    fn transmit(&mut self, data: &[u8], wait: Duration, stats: &mut Stats) -> Result<(), Error> {
        if !self.connected {
            self.reconnect()?;
        }
        let mut retried = false;
        let mut deadline: Option<Instant> = None;
        let mut wait_left: Option<Duration> = None;
        loop {
            let socket = match &self.socket {
                Some(socket) => socket,
                None => return Err(Error::Unavailable(self.last_err)),
            };
            let result = match wait_left.take() {
                None => socket.send(data),
                Some(left) => send_waiting(socket, data, left),
            };
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if is_full(&e) {
                let now = Instant::now();
                let end = match deadline {
                    Some(end) => end,
                    None if wait.is_zero() => return Err(Error::QueueFull),
                    None => {
                        stats.waits += 1;
                        *deadline.insert(now + wait)
                    }
                };
                if now >= end {
                    return Err(Error::QueueFull);
                }
                wait_left = Some(end - now);
                continue;
            }
            let error = Error::Unavailable(e.kind());
            if !peer_gone(&e) {
                return Err(error);
            }
            self.connected = false; // the sidecar went away: try its socket path again
            self.last_err = e.kind();
            if retried {
                return Err(error);
            }
            self.reconnect()?;
            retried = true;
        }
    }
}

/// What a failed send does with the pending datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Drop it (counted; its transfer adds become debt).
    Never,
    /// Keep it unchanged when the queue is full (the flusher tries again).
    IfFull,
    /// Keep it unchanged whatever the failure (debt-only sends).
    Always,
}

pub(crate) struct State {
    link: Link,
    pending: Datagram,
    mode: Mode,
    /// A buffered wait timed out: no waiting until a send gets through again.
    stalled: bool,
    /// Time of the pending datagram's first sample.
    first_at: Instant,
    /// Last debt-only send attempt.
    debt_try: Option<Instant>,
    /// `p2p.transfers.active` adds whose datagram was dropped: resent in a later datagram.
    active_debt: i64,
    /// `p2p.transfers.active` adds in the pending datagram.
    active_pending: i64,
    pending_samples: u64,
    /// Of which transfer adds (kept when the datagram is dropped).
    kept_pending: u64,
    pending_drops: u64,
    batch_depth: u32,
    stats: Stats,
    stopping: bool,
    flusher_running: bool,
}

impl State {
    fn call_wait(&self) -> Duration {
        match self.mode {
            Mode::Immediate => Duration::ZERO,
            Mode::Buffered { .. } if self.stalled => Duration::ZERO,
            Mode::Buffered { max_wait } => max_wait,
            Mode::Blocking { timeout } => timeout,
        }
    }

    fn reset_pending(&mut self) {
        self.pending.clear();
        self.pending_samples = 0;
        self.active_pending = 0;
        self.kept_pending = 0;
    }

    /// Sends the pending datagram, led by the pending drop report and followed by the
    /// undelivered transfer adds (the debt) when they fit, then starts an empty one.
    fn send_pending(&mut self, wait: Duration, keep: Keep, wake: &Condvar) -> Result<(), Error> {
        let debt = self.active_debt;
        if self.pending.is_empty() && !(debt != 0 && keep == Keep::Always) {
            return Ok(());
        }
        let mark = self.pending.mark();
        let fold = Sample { kind: Kind::GaugeAdd, name: ACTIVE_TRANSFERS, labels: &[], value: Value::F64(debt as f64) };
        self.pending.keep_debt_room(false); // the fold may use the room kept for it
        let folded = debt != 0 && self.pending.append(&fold).is_ok();
        self.pending.keep_debt_room(debt != 0);
        let data = self.pending.finish(self.pending_drops);
        let result = self.link.transmit(data, wait, &mut self.stats);
        match result {
            Err(e) if keep == Keep::Always || (keep == Keep::IfFull && e == Error::QueueFull) => {
                self.pending.rollback(mark); // take the debt out again: stays pending as it was
                return result;
            }
            Ok(()) => {
                self.pending_drops = 0;
                self.stalled = false;
                if folded {
                    self.active_debt -= debt;
                }
                self.stats.sent_datagrams += 1;
                self.stats.sent_samples += self.pending_samples;
                self.stats.resent_adds += u64::from(folded);
            }
            Err(e) => {
                // The transfer adds of a lost datagram are not lost: they are resent later.
                self.pending_drops += 1;
                self.active_debt += self.active_pending;
                if self.active_debt != 0 {
                    wake.notify_one(); // the flusher delivers it if no call does
                }
                self.stats.dropped_datagrams += 1;
                self.stats.dropped_samples += self.pending_samples - self.kept_pending;
                self.stats.kept_samples += self.kept_pending;
                if e == Error::QueueFull && !wait.is_zero() && matches!(self.mode, Mode::Buffered { .. }) {
                    self.stalled = true; // the sidecar is stopped or stuck: calls stop waiting
                }
            }
        }
        self.reset_pending();
        self.pending.keep_debt_room(self.active_debt != 0);
        result
    }

    /// After samples were appended: sends at once outside buffered mode (and outside batches);
    /// in buffered mode wakes the flusher when the pending datagram just started.
    fn settle(&mut self, was_empty: bool, wake: &Condvar) -> Result<(), Error> {
        if self.batch_depth > 0 {
            return Ok(());
        }
        if !matches!(self.mode, Mode::Buffered { .. }) || !self.flusher_running {
            return self.send_pending(self.call_wait(), Keep::Never, wake);
        }
        if was_empty {
            self.first_at = Instant::now();
            wake.notify_one();
        }
        Ok(())
    }

    /// Appends samples that must travel in one datagram, sending the pending datagram first if
    /// they do not fit after it (its failure is counted, not returned: it is not about these
    /// samples), then settles them. `active_delta`: the transfer add among them, never lost.
    fn add_group(&mut self, samples: &[Sample<'_>], active_delta: i64, wake: &Condvar) -> Result<(), Error> {
        let mut was_empty;
        loop {
            let mark = self.pending.mark();
            was_empty = self.pending.is_empty();
            if samples.iter().all(|s| self.pending.append(s).is_ok()) {
                break;
            }
            self.pending.rollback(mark); // the part of the group already appended
            if was_empty {
                return Err(Error::TooLarge); // does not fit even in an empty datagram
            }
            let _ = self.send_pending(self.call_wait(), Keep::Never, wake);
        }
        self.pending_samples += samples.len() as u64;
        if active_delta != 0 {
            self.active_pending += active_delta;
            self.kept_pending += 1;
        }
        self.settle(was_empty, wake)
    }

    /// One sample through a series handle: while its series record is in the pending datagram
    /// (`cached` knows where) only the value is encoded; else the record is appended again.
    pub(crate) fn add_indexed(&mut self, s: &Sample<'_>, cached: &AtomicU64, wake: &Condvar) -> Result<(), Error> {
        let mut was_empty = self.pending.is_empty();
        let hit = self.pending.cached_index(cached.load(Ordering::Relaxed));
        if let Some(index) = hit {
            if self.pending.append_indexed(s.kind, index, s.value).is_ok() {
                self.pending_samples += 1;
                return self.settle(was_empty, wake);
            }
        }
        let mut appended = self.pending.append(s);
        if appended == Err(Error::TooLarge) && !was_empty {
            // The pending datagram is full: send it and start anew.
            let _ = self.send_pending(self.call_wait(), Keep::Never, wake);
            was_empty = true;
            appended = self.pending.append(s);
        }
        cached.store(self.pending.series_key(appended?), Ordering::Relaxed);
        self.pending_samples += 1;
        self.settle(was_empty, wake)
    }

    /// Sends what is pending and, best effort, the transfer debt; waits for room like a call.
    fn flush(&mut self, wake: &Condvar) -> Result<(), Error> {
        let result = self.send_pending(self.call_wait(), Keep::Never, wake);
        if self.active_debt != 0 {
            let _ = self.send_pending(self.call_wait(), Keep::Always, wake);
        }
        result
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    /// The flusher waits on it.
    wake: Condvar,
    /// The process that opened the client: a forked child neither flushes nor sends its copy.
    owner: u32,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flush_if_owner(&self) {
        if std::process::id() == self.owner {
            let _ = self.lock().flush(&self.wake);
        }
    }
}

/// The flusher thread: sends the pending datagram [`LINGER`] after its first sample, keeps it
/// while the queue is full, and delivers transfer debt on its own when no call does.
fn flusher_main(inner: Arc<Inner>) {
    let mut state = inner.lock();
    while !state.stopping {
        let now = Instant::now();
        if !state.pending.is_empty() && state.batch_depth == 0 {
            let due = state.first_at + LINGER;
            if now < due {
                state = inner.wake.wait_timeout(state, due - now).unwrap_or_else(PoisonError::into_inner).0;
                continue;
            }
            if state.send_pending(Duration::ZERO, Keep::IfFull, &inner.wake) == Err(Error::QueueFull) {
                // The queue is full: keep the samples and try again shortly, without the lock
                // (callers go on recording; one whose samples do not fit waits for room itself).
                state = inner
                    .wake
                    .wait_timeout(state, Duration::from_millis(1))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            continue;
        }
        if state.active_debt != 0 && state.pending.is_empty() {
            // A transfer's +-1 waits for a datagram of its own, tried every RECONNECT.
            if let Some(due) = state.debt_try.map(|t| t + RECONNECT).filter(|&due| now < due) {
                state = inner.wake.wait_timeout(state, due - now).unwrap_or_else(PoisonError::into_inner).0;
                continue;
            }
            state.debt_try = Some(now);
            let _ = state.send_pending(Duration::ZERO, Keep::Always, &inner.wake);
            continue;
        }
        state = inner.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
    }
}

/// Every open client, for the flush at exit.
static REGISTRY: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
static EXIT_HOOK: Once = Once::new();

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

/// Runs at a normal exit (C library `exit()`, which `main` returning and `process::exit` call):
/// every client still open sends what is pending.
/// In a forked child the registry's lock may have been held by a thread that does not exist
/// there: the lock is only tried (for up to 100 ms), so that exit never hangs.
extern "C" fn flush_all_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let deadline = Instant::now() + Duration::from_millis(100);
        let clients = loop {
            match REGISTRY.try_lock() {
                Ok(clients) => break clients,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        for inner in clients.iter().filter_map(Weak::upgrade) {
            inner.flush_if_owner();
        }
    });
}

/// The handle all clones of one [`Client`] share: its drop stops the flusher and flushes.
struct Handle {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        {
            let mut state = self.inner.lock();
            state.stopping = true;
            self.inner.wake.notify_all();
        }
        let flusher = self.flusher.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = flusher {
            let _ = thread.join();
        }
        self.inner.flush_if_owner();
    }
}

/// A connection to the sidecar. `Send + Sync` and cheap to clone (clones share one pending
/// datagram, socket and flusher thread); the last clone dropped flushes. See the crate docs for
/// how it sends, its bounds and its errors.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner().lock();
        f.debug_struct("Client").field("path", &state.link.path).field("mode", &state.mode).finish()
    }
}

/// Samples recorded between [`Client::batch`] and the end of the returned guard are packed into
/// shared datagrams in every mode; the flusher leaves them alone. Ends (sending what is pending)
/// on drop or with [`Batch::end`]. Batches nest.
#[must_use = "the batch ends when this guard is dropped"]
pub struct Batch<'a> {
    client: &'a Client,
    ended: bool,
}

impl Batch<'_> {
    /// Ends the batch; the outermost end sends what is pending and returns that send's result.
    pub fn end(mut self) -> Result<(), Error> {
        self.ended = true;
        self.client.batch_end()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.client.batch_end();
        }
    }
}

impl Client {
    /// Opens a client for the sidecar's socket at `path`. The socket is connected lazily: an
    /// absent sidecar is not an error. Fails only for a path that cannot be a Unix socket
    /// address (empty, or longer than 107 bytes).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Client> {
        let path = path.as_ref();
        let len = path.as_os_str().len();
        if len == 0 || len > MAX_PATH {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path must be 1-107 bytes"));
        }
        Ok(Client::unchecked(path))
    }

    /// Opens a client for `$P2PM_SOCKET` when it is set and non-empty, else
    /// [`crate::DEFAULT_SOCKET`].
    pub fn from_env() -> io::Result<Client> {
        match std::env::var_os(crate::SOCKET_ENV) {
            Some(path) if !path.is_empty() => Client::open(path),
            _ => Client::open(crate::DEFAULT_SOCKET),
        }
    }

    pub(crate) fn unchecked(path: &Path) -> Client {
        let state = State {
            link: Link { path: path.to_owned(), socket: None, connected: false, last_try: None, last_err: io::ErrorKind::NotFound },
            pending: Datagram::new(),
            mode: Mode::default(),
            stalled: false,
            first_at: Instant::now(),
            debt_try: None,
            active_debt: 0,
            active_pending: 0,
            pending_samples: 0,
            kept_pending: 0,
            pending_drops: 0,
            batch_depth: 0,
            stats: Stats::default(),
            stopping: false,
            flusher_running: true,
        };
        let inner = Arc::new(Inner { state: Mutex::new(state), wake: Condvar::new(), owner: std::process::id() });
        let _ = inner.lock().link.reconnect(); // an absent sidecar is fine: sends connect later
        let for_thread = Arc::clone(&inner);
        let flusher = std::thread::Builder::new()
            .name("p2pmetrics-flush".into())
            .stack_size(64 * 1024)
            .spawn(move || flusher_main(for_thread))
            .ok();
        // Without a flusher thread (spawn failed) buffered calls send at once.
        inner.lock().flusher_running = flusher.is_some();
        EXIT_HOOK.call_once(|| {
            // SAFETY: atexit() only stores the pointer of a function that lives for the whole
            // program and unwinds nowhere (it catches panics).
            unsafe {
                atexit(flush_all_at_exit);
            }
        });
        let mut clients = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        clients.retain(|c| c.strong_count() > 0);
        clients.push(Arc::downgrade(&inner));
        Client { handle: Arc::new(Handle { inner, flusher: Mutex::new(flusher) }) }
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// One sample through a series handle (see [`crate::Series`]); validated by its caller.
    pub(crate) fn submit_indexed(&self, sample: &Sample<'_>, cached: &AtomicU64) -> Result<(), Error> {
        let inner = self.inner();
        inner.lock().add_indexed(sample, cached, &inner.wake)
    }

    /// Validates the samples of one call, then adds them as one group (one datagram).
    pub(crate) fn submit(&self, samples: &[Sample<'_>], active_delta: i64) -> Result<(), Error> {
        for s in samples {
            s.validate()?;
        }
        let inner = self.inner();
        inner.lock().add_group(samples, active_delta, &inner.wake)
    }

    fn submit_one(&self, kind: Kind, name: &str, value: Value<'_>, labels: Labels<'_>) -> Result<(), Error> {
        self.submit(&[Sample { kind, name, labels, value }], 0)
    }

    /// Adds an exact 64-bit integer to the counter `name{labels}`.
    pub fn counter_add(&self, name: &str, value: u64, labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::Counter, name, Value::U64(value), labels)
    }

    /// Adds `value` (finite, >= 0) to the counter `name{labels}`.
    pub fn counter_add_f64(&self, name: &str, value: f64, labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::Counter, name, Value::F64(value), labels)
    }

    /// Sets the gauge `name{labels}` to `value` (any value, NaN and infinities included).
    pub fn gauge_set(&self, name: &str, value: f64, labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::GaugeSet, name, Value::F64(value), labels)
    }

    /// Adds `delta` (finite, may be negative) to the gauge `name{labels}` (an up-down counter).
    pub fn gauge_add(&self, name: &str, delta: f64, labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::GaugeAdd, name, Value::F64(delta), labels)
    }

    /// Records one observation of `value` (finite) into the histogram `name{labels}` (no `le`
    /// label).
    pub fn histogram_observe(&self, name: &str, value: f64, labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::Histogram, name, Value::F64(value), labels)
    }

    /// Adds `key` (0-1,024 arbitrary bytes) to the distinct count `name{labels}`: the sidecar
    /// exposes the estimated number of distinct keys as a gauge (HyperLogLog, ~1.6 % error).
    pub fn distinct_add(&self, name: &str, key: &[u8], labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::Distinct, name, Value::Key(key), labels)
    }

    /// Counts one occurrence of `key` (1-128 bytes) in the top-K sketch `name{labels}` (no `key`
    /// label): the sidecar exposes the K most frequent keys as `name{...,key="..."}` and each
    /// count's overestimation bound as `name_error{...,key="..."}`.
    pub fn topk_add(&self, name: &str, key: &str, labels: Labels<'_>) -> Result<(), Error> {
        self.submit_one(Kind::TopK, name, Value::Key(key.as_bytes()), labels)
    }

    /// Sends the pending samples now, if any (waiting for room like a call), and then any
    /// undelivered transfer adds. `Ok` also when nothing was pending; else the send's error (the
    /// datagram was dropped and counted).
    pub fn flush(&self) -> Result<(), Error> {
        let inner = self.inner();
        inner.lock().flush(&inner.wake)
    }

    /// Starts a batch (see [`Batch`]).
    pub fn batch(&self) -> Batch<'_> {
        self.inner().lock().batch_depth += 1;
        Batch { client: self, ended: false }
    }

    fn batch_end(&self) -> Result<(), Error> {
        let inner = self.inner();
        let mut state = inner.lock();
        state.batch_depth = state.batch_depth.saturating_sub(1);
        if state.batch_depth > 0 {
            return Ok(());
        }
        let wait = state.call_wait();
        state.send_pending(wait, Keep::Never, &inner.wake)
    }

    /// Sets how the client sends, sending what is pending first.
    pub fn set_mode(&self, mode: Mode) {
        let inner = self.inner();
        let mut state = inner.lock();
        if state.batch_depth == 0 {
            let wait = state.call_wait();
            let _ = state.send_pending(wait, Keep::Never, &inner.wake);
        }
        state.mode = mode;
        state.stalled = false;
    }

    /// How the client sends.
    pub fn mode(&self) -> Mode {
        self.inner().lock().mode
    }

    /// The client's counters.
    pub fn stats(&self) -> Stats {
        let state = self.inner().lock();
        Stats { buffered_samples: state.pending_samples, ..state.stats }
    }

    /// Datagrams dropped since the client was opened (reported in-band or not yet).
    pub fn dropped(&self) -> u64 {
        self.inner().lock().stats.dropped_datagrams
    }

    // ---- The seed's helpers (the C client's p2pm_record_*), one datagram per call ----------

    /// See [`crate::record_image_import`].
    pub fn record_image_import(&self, artifact_type: &str, success: bool, size_bytes: u64) -> Result<(), Error> {
        self.record_image_import_labels(artifact_type, success, size_bytes, &[])
    }

    /// [`Client::record_image_import`] with extra labels (e.g. `peer`) on every sample.
    pub fn record_image_import_labels(&self, artifact_type: &str, success: bool, size_bytes: u64, labels: Labels<'_>) -> Result<(), Error> {
        let list = LabelList::join(Some(("artifact_type", artifact_type)), labels)?;
        let l = list.as_slice();
        let total = Sample { kind: Kind::Counter, name: "p2p.image.imports.total", labels: l, value: Value::U64(1) };
        if !success {
            let failed = Sample { name: "p2p.image.imports.failed", ..total };
            self.submit(&[total, failed], 0)
        } else if size_bytes > 0 {
            let bytes = Sample { name: "p2p.bytes_transferred.total", value: Value::U64(size_bytes), ..total };
            self.submit(&[total, bytes], 0)
        } else {
            self.submit(&[total], 0)
        }
    }

    /// See [`crate::record_image_download`].
    pub fn record_image_download(&self, image_id: &str, success: bool, duration: Duration) -> Result<(), Error> {
        self.record_image_download_labels(image_id, success, duration, &[])
    }

    /// [`Client::record_image_download`] with the duration in seconds (finite, as the seed's
    /// `record_p2p_image_download(image_id, success, duration_secs: f64)`).
    pub fn record_image_download_secs(&self, image_id: &str, success: bool, duration_secs: f64) -> Result<(), Error> {
        self.download(image_id, success, duration_secs, &[])
    }

    /// [`Client::record_image_download`] with extra labels on every sample.
    pub fn record_image_download_labels(&self, image_id: &str, success: bool, duration: Duration, labels: Labels<'_>) -> Result<(), Error> {
        self.download(image_id, success, duration.as_secs_f64(), labels)
    }

    fn download(&self, _image_id: &str, success: bool, seconds: f64, labels: Labels<'_>) -> Result<(), Error> {
        let total = Sample { kind: Kind::Counter, name: "p2p.image.downloads.total", labels, value: Value::U64(1) };
        let seconds = Sample { kind: Kind::Histogram, name: TRANSFER_DURATION, labels, value: Value::F64(seconds) };
        if success {
            self.submit(&[total, seconds], 0)
        } else {
            // The seed's order: total, failed, duration.
            let failed = Sample { name: "p2p.image.downloads.failed", ..total };
            self.submit(&[total, failed, seconds], 0)
        }
    }

    /// See [`crate::record_chunk_transfer`].
    pub fn record_chunk_transfer(&self, size_bytes: u64, deduplicated: bool) -> Result<(), Error> {
        self.record_chunk(size_bytes, deduplicated, None, &[])
    }

    /// [`Client::record_chunk_transfer`] with extra labels on every sample.
    pub fn record_chunk_transfer_labels(&self, size_bytes: u64, deduplicated: bool, labels: Labels<'_>) -> Result<(), Error> {
        self.record_chunk(size_bytes, deduplicated, None, labels)
    }

    /// [`Client::record_chunk_transfer`], and `chunk_hash` joins the distinct count
    /// `p2p.chunks.unique` (unique chunks, to estimate storage needs) in the same datagram.
    pub fn record_chunk_transfer_hash(&self, size_bytes: u64, deduplicated: bool, chunk_hash: &str) -> Result<(), Error> {
        self.record_chunk(size_bytes, deduplicated, Some(chunk_hash), &[])
    }

    fn record_chunk(&self, size_bytes: u64, deduplicated: bool, chunk_hash: Option<&str>, labels: Labels<'_>) -> Result<(), Error> {
        let chunks = Sample { kind: Kind::Counter, name: "p2p.chunks_transferred.total", labels, value: Value::U64(1) };
        let mut samples = [
            chunks,
            Sample { name: "p2p.bytes_transferred.total", value: Value::U64(size_bytes), ..chunks },
            chunks,
        ];
        let mut n = 2;
        if deduplicated {
            samples[0].name = "p2p.chunks_deduplicated.total";
            n = 1;
        }
        if let Some(hash) = chunk_hash {
            samples[n] = Sample { kind: Kind::Distinct, name: "p2p.chunks.unique", labels: &[], value: Value::Key(hash.as_bytes()) };
            n += 1;
        }
        self.submit(&samples[..n], 0)
    }

    /// Chunk popularity: counts one request of `chunk_hash` (1-128 bytes) in the top-K sketch
    /// `p2p.chunks.requested`.
    pub fn record_chunk_request(&self, chunk_hash: &str) -> Result<(), Error> {
        self.topk_add("p2p.chunks.requested", chunk_hash, &[])
    }

    /// See [`crate::record_verification`].
    pub fn record_verification(&self, success: bool, verification_type: &str) -> Result<(), Error> {
        let name = if success { "p2p.verification.success" } else { "p2p.verification.failed" };
        self.counter_add(name, 1, &[("verification_type", verification_type)])
    }

    /// See [`crate::record_cache_access`].
    pub fn record_cache_access(&self, hit: bool, cache_type: &str) -> Result<(), Error> {
        let name = if hit { "p2p.cache.hits" } else { "p2p.cache.misses" };
        self.counter_add(name, 1, &[("cache_type", cache_type)])
    }
}
