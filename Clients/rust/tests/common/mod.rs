//! Test support: temporary directories, a receiving socket, the built daemon and a scraper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("p2pm-rs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bound Unix datagram socket standing in for the sidecar.
pub struct Receiver {
    pub dir: TempDir,
    pub path: PathBuf,
    pub socket: UnixDatagram,
}

impl Receiver {
    pub fn new() -> Receiver {
        let dir = TempDir::new("recv");
        let path = dir.path("ingest.sock");
        let socket = UnixDatagram::bind(&path).expect("bind receiver");
        Receiver { dir, path, socket }
    }

    /// The next datagram, waiting up to a second.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        self.socket.set_nonblocking(false).unwrap();
        self.socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let n = self.socket.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// The next queued datagram, without waiting.
    pub fn recv_now(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        self.socket.set_nonblocking(true).unwrap();
        let n = self.socket.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Receives every queued datagram without waiting; returns how many.
    pub fn drain(&self) -> usize {
        let mut buf = vec![0u8; 65536];
        self.socket.set_nonblocking(true).unwrap();
        let mut n = 0;
        while self.socket.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

/// A receiver drained by a thread of its own, so that senders never find its queue full.
pub struct Collector {
    pub path: PathBuf,
    datagrams: std::sync::mpsc::Receiver<Vec<u8>>,
    _receiver: std::sync::Arc<Receiver>,
}

impl Collector {
    pub fn new() -> Collector {
        let receiver = std::sync::Arc::new(Receiver::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let r = std::sync::Arc::clone(&receiver);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            r.socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            loop {
                if let Ok(n) = r.socket.recv(&mut buf) {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                } else if std::sync::Arc::strong_count(&r) == 1 {
                    return;
                }
            }
        });
        Collector { path: receiver.path.clone(), datagrams: rx, _receiver: receiver }
    }

    /// The next datagram, waiting up to a few seconds.
    pub fn recv(&self) -> Option<Vec<u8>> {
        self.datagrams.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// Datagrams received and not taken yet, after a short quiet period.
    pub fn drain(&self) -> usize {
        std::thread::sleep(Duration::from_millis(100));
        self.datagrams.try_iter().count()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The worktree's debug build of the daemon (or $P2PM_DAEMON).
pub fn daemon_binary() -> PathBuf {
    match std::env::var_os("P2PM_DAEMON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.build/debug/p2pmetricsd"),
    }
}

/// The built p2pmetricsd on a temporary socket and a free loopback port; stopped on drop.
pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub port: u16,
    child: Child,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_at(None)
    }

    /// Starts the daemon on `socket` (default: a new temporary path).
    pub fn start_at(socket: Option<PathBuf>) -> Daemon {
        let bin = daemon_binary();
        assert!(bin.exists(), "{} is not built (run swift build at the top of the repository)", bin.display());
        let dir = TempDir::new("daemon");
        let socket = socket.unwrap_or_else(|| dir.path("ingest.sock"));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path("daemon.log")).unwrap();
        let child = Command::new(&bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start p2pmetricsd");
        let mut d = Daemon { dir, socket, port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("p2pmetricsd exited with {status}: {}", std::fs::read_to_string(d.dir.path("daemon.log")).unwrap_or_default());
            }
            if d.try_scrape().is_some() && d.socket.exists() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("p2pmetricsd did not serve /metrics in time");
    }

    pub fn try_scrape(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then_some(())?;
        head.split(' ').nth(1).filter(|&code| code == "200")?;
        Some(body.to_owned())
    }

    /// The exposition, parsed: `name{labels}` (labels sorted, as written by the daemon) -> value.
    pub fn scrape(&self) -> Metrics {
        let text = self.try_scrape().expect("scrape /metrics");
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
            };
            m.insert(series.to_owned(), value);
        }
        Metrics(m)
    }

    /// Scrapes until `series` has `want` (the daemon applies datagrams asynchronously).
    pub fn wait_for(&self, series: &str, want: f64) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.scrape();
            if m.get(series) == Some(want) || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Daemon {
    /// The daemon's process id, for `kill` from another thread.
    pub fn signal_target(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends a signal to the daemon (`kill -SIG pid`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// The value of `series`, 0 when absent (a counter never incremented).
    pub fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }
}
