//! bench: cost per call of the Rust client against a live receiver, the same measurements as
//! the C client's Benchmarks/load/client-bench.c (same metric, labels and series), so that
//! Benchmarks/bench prints both in one run.
//!
//!   cargo run --release --offline --example bench -- --socket PATH [--seconds S]
//!
//! Output: key=value lines, ns per call (best of 3 rounds), drops, and allocations per call
//! (a counting global allocator; 0 expected).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use p2pmetrics::{Client, Mode};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator and counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LABELS: [&[(&str, &str)]; 4] = [
    &[("cache_type", "chunk"), ("peer", "peer-042")],
    &[("cache_type", "vm_image"), ("peer", "peer-042")],
    &[("cache_type", "chunk"), ("peer", "peer-043")],
    &[("cache_type", "vm_image"), ("peer", "peer-043")],
];

#[derive(Default)]
struct Best {
    ns: f64,
    calls: u64,
    dropped: u64,
    allocations: u64,
}

impl Best {
    fn keep(&mut self, calls: u64, spent: Duration, dropped: u64, allocations: u64) {
        let per = spent.as_nanos() as f64 / calls as f64;
        if self.calls == 0 || per < self.ns {
            self.ns = per;
        }
        self.calls += calls;
        self.dropped += dropped;
        self.allocations += allocations;
    }

    fn print(&self, key: &str) {
        println!("{key}_ns={:.1}\n{key}_calls={}\n{key}_dropped={}", self.ns, self.calls, self.dropped);
        println!("{key}_allocations_per_call={:.4}", self.allocations as f64 / self.calls as f64);
    }
}

/// Calls `f` in blocks of 256 for `budget`; returns (calls, time, datagrams dropped, allocations).
fn saturated(c: &Client, budget: Duration, mut f: impl FnMut(usize)) -> (u64, Duration, u64, u64) {
    let (d0, a0) = (c.dropped(), ALLOCATIONS.load(Ordering::Relaxed));
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < budget {
        for k in 0..256 {
            f(k);
        }
        n += 256;
    }
    let spent = t0.elapsed();
    (n, spent, c.dropped() - d0, ALLOCATIONS.load(Ordering::Relaxed) - a0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let path = arg("--socket").unwrap_or_else(|| {
        eprintln!("usage: bench --socket PATH [--seconds S]");
        std::process::exit(2);
    });
    let budget = Duration::from_secs_f64(arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(0.3));
    let c = Client::open(&path).expect("open");
    // Let the flusher thread start (its thread-locals are allocations of its own, once).
    let _ = c.counter_add("p2p.cache.hits", 1, LABELS[0]);
    let _ = c.flush();
    std::thread::sleep(Duration::from_millis(20));
    let (mut paced, mut immediate, mut buffered, mut batched, mut nolabels, mut handles) =
        (Best::default(), Best::default(), Best::default(), Best::default(), Best::default(), Best::default());
    let series: Vec<_> = LABELS.iter().map(|l| c.series("p2p.cache.hits", l).expect("series")).collect();
    for _round in 0..3 {
        // Immediate, paced: bursts of 8 timed calls, then a pause for the receiver to drain.
        c.set_mode(Mode::Immediate);
        let (d0, a0) = (c.dropped(), ALLOCATIONS.load(Ordering::Relaxed));
        let (mut spent, mut calls) = (Duration::ZERO, 0);
        let begin = Instant::now();
        while begin.elapsed() < budget {
            let t = Instant::now();
            for _ in 0..8 {
                let _ = c.counter_add("p2p.cache.hits", 1, LABELS[0]);
            }
            spent += t.elapsed();
            calls += 8;
            std::thread::sleep(Duration::from_micros(200));
        }
        paced.keep(calls, spent, c.dropped() - d0, ALLOCATIONS.load(Ordering::Relaxed) - a0);

        // Immediate, saturated: back to back, the queue mostly full.
        let (n, t, d, a) = saturated(&c, budget, |_| {
            let _ = c.counter_add("p2p.cache.hits", 1, LABELS[0]);
        });
        immediate.keep(n, t, d, a);

        // The default (buffered) mode: 4 series, the flusher and the bounded waits included.
        c.set_mode(Mode::default());
        let (n, t, d, a) = saturated(&c, budget, |k| {
            let _ = c.counter_add("p2p.cache.hits", 1, LABELS[k & 3]);
        });
        let _ = c.flush();
        buffered.keep(n, t, d, a);

        // Batched: 4 series with 2 labels, packed into 8 KiB datagrams (sends included).
        let batch = c.batch();
        let (n, t, d, a) = saturated(&c, budget, |k| {
            let _ = c.counter_add("p2p.cache.hits", 1, LABELS[k & 3]);
        });
        let _ = batch.end();
        batched.keep(n, t, d, a);

        let batch = c.batch();
        let (n, t, d, a) = saturated(&c, budget, |_| {
            let _ = c.counter_add("p2p.chunks_transferred.total", 1, &[]);
        });
        let _ = batch.end();
        nolabels.keep(n, t, d, a);

        // Batched through series handles: the same 4 series, resolved once.
        let batch = c.batch();
        let (n, t, d, a) = saturated(&c, budget, |k| {
            let _ = series[k & 3].counter_add(1);
        });
        let _ = batch.end();
        handles.keep(n, t, d, a);
        std::thread::sleep(Duration::from_millis(50));
    }
    paced.print("immediate_paced");
    immediate.print("immediate");
    buffered.print("buffered");
    batched.print("batched");
    nolabels.print("batched_nolabels");
    handles.print("batched_handle");
    let stats = c.stats();
    println!("waits={}", stats.waits);
}
