//! No allocation per call: a counting global allocator counts the allocations of the calling
//! thread while it records 100,000 samples per call kind, buffered and immediate.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Receiver;
use p2pmetrics::{Client, Mode, Series};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards to the system allocator; counting touches only a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const CALLS: u64 = 100_000;

/// One round of every call kind; returns the number of calls made.
fn round(c: &Client, h: &Series<'_>, i: u64) -> u64 {
    h.counter_add(i).unwrap();
    h.counter_add_f64(1.5).unwrap();
    let peer = [("peer", "node-7")];
    c.counter_add("p2p.bytes_transferred.total", i, &peer).unwrap();
    c.counter_add_f64("work.seconds.total", 0.25, &[]).unwrap();
    c.gauge_set("queue.depth", i as f64, &[("queue", "fast")]).unwrap();
    c.gauge_add("inflight", -1.0, &[]).unwrap();
    c.histogram_observe("latency.seconds", 0.003, &peer).unwrap();
    c.distinct_add("p2p.chunks.unique", &i.to_le_bytes(), &[]).unwrap();
    c.topk_add("p2p.chunks.requested", "sha256:4f2a", &[]).unwrap();
    c.record_image_import("microvm", i % 10 != 9, 1 << 20).unwrap();
    c.record_image_download("img", true, Duration::from_millis(i % 1000)).unwrap();
    c.record_chunk_transfer(65536, i % 3 == 0).unwrap();
    c.record_chunk_transfer_labels(65536, false, &peer).unwrap();
    c.record_verification(true, "chunk_hash").unwrap();
    c.record_cache_access(i % 2 == 0, "chunk").unwrap();
    c.start_transfer_labels(&peer).end().unwrap();
    16
}

#[test]
fn no_allocation_per_call_buffered_or_immediate() {
    let r = Arc::new(Receiver::new());
    let stop = Arc::new(AtomicBool::new(false));
    let drain = std::thread::spawn({
        let (r, stop) = (Arc::clone(&r), Arc::clone(&stop));
        move || {
            let mut buf = vec![0u8; 65536];
            r.socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = r.socket.recv(&mut buf);
            }
        }
    });
    let c = Client::open(&r.path).unwrap();
    let before = allocations();
    let probe = vec![1u8; 10];
    assert_eq!(allocations(), before + 1, "the counter sees this thread's allocations");
    drop(probe);
    for (mode, label) in [(Mode::default(), "buffered"), (Mode::Blocking { timeout: Duration::from_secs(5) }, "one datagram per call (blocking mode)")] {
        c.set_mode(mode);
        let handle = c.series("handled.total", &[("peer", "node-7")]).unwrap();
        round(&c, &handle, 0); // the first call of a mode may set the socket up
        let before = allocations();
        let mut calls = 0;
        for i in 0..CALLS / 16 {
            calls += round(&c, &handle, i);
        }
        let n = allocations() - before;
        println!("{label}: {n} allocations in {calls} calls");
        assert_eq!(n, 0, "{label}: {n} allocations in {calls} calls");
    }
    assert_eq!(c.stats().dropped_datagrams, 0);
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
}
