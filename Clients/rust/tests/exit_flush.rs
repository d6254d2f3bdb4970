//! Samples still pending when the process exits are delivered: the crate registers an exit hook
//! for every open client (the default one included), run by `main` returning and by
//! `std::process::exit`. The child is this test binary run again: its samples sit in a batch
//! that is never ended, so only the exit hook can send them. A forked child's exit does not send
//! its parent's samples a second time.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;

const CHILD_ENV: &str = "P2PM_EXIT_FLUSH_CHILD";

/// Runs only as the child (with CHILD_ENV set): records through the default client and exits.
#[test]
fn child_records_then_exits() {
    let how = match std::env::var(CHILD_ENV) {
        Ok(how) => how,
        Err(_) => return,
    };
    let global = p2pmetrics::global();
    std::mem::forget(global.batch()); // the flusher leaves a batch alone
    p2pmetrics::record_image_import("microvm", true, 42);
    global.counter_add("exit.total", 7, &[("how", &how)]).unwrap();
    let own = p2pmetrics::Client::from_env().unwrap();
    std::mem::forget(own.batch());
    own.counter_add("exit.total", 1, &[("how", &how)]).unwrap();
    std::mem::forget(own); // never dropped: only the exit hook can send it
    assert_eq!(global.stats().sent_datagrams, 0);
    if how == "process_exit" {
        std::process::exit(0);
    }
    if how == "fork" {
        // The forked child exits through exit() (the exit hook runs there too): it must not
        // send the parent's pending samples; the parent sends them once, as main returns.
        // SAFETY: the child calls only exit(); the parent waits for it.
        unsafe {
            let pid = fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                exit(0);
            }
            let mut status = 0;
            assert_eq!(waitpid(pid, &mut status, 0), pid);
            assert_eq!(status, 0);
        }
    }
}

extern "C" {
    fn fork() -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn exit(status: i32) -> !;
}

#[test]
fn samples_pending_at_exit_are_delivered() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let d = Daemon::start();
    for how in ["process_exit", "main_returns", "fork"] {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_records_then_exits", "--test-threads=1", "--quiet"])
            .env(CHILD_ENV, how)
            .env(p2pmetrics::SOCKET_ENV, &d.socket)
            .status()
            .unwrap();
        assert!(status.success(), "{how}: {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = d.scrape();
        if m.value("p2p_image_imports_total{artifact_type=\"microvm\"}") >= 3.0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200)); // a duplicate from the forked child would show now
    let m = d.scrape();
    assert_eq!(m.value("p2p_image_imports_total{artifact_type=\"microvm\"}"), 3.0);
    assert_eq!(m.value("p2p_bytes_transferred_total{artifact_type=\"microvm\"}"), 126.0);
    assert_eq!(m.value("exit_total{how=\"fork\"}"), 8.0, "sent once, by the parent");
    assert_eq!(m.value("exit_total{how=\"process_exit\"}"), 8.0);
    assert_eq!(m.value("exit_total{how=\"main_returns\"}"), 8.0);
    assert_eq!(m.value("p2pmetricsd_client_dropped_datagrams_total"), 0.0);
}

const ABORT_ENV: &str = "P2PM_ABORT_CHILD";

/// Runs only as the child (with ABORT_ENV set): starts a transfer, delivers its +1, and dies
/// without unwinding.
#[test]
fn child_starts_a_transfer_then_aborts() {
    if std::env::var_os(ABORT_ENV).is_none() {
        return;
    }
    let guard = p2pmetrics::start_transfer();
    p2pmetrics::flush().unwrap();
    std::mem::forget(guard);
    std::process::abort();
}

/// No destructor runs in a process that aborts: the sidecar withdraws the +1 of the dead process.
#[test]
fn a_process_that_aborts_mid_transfer_leaves_no_active_transfer() {
    if std::env::var_os(ABORT_ENV).is_some() || std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let d = Daemon::start();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_starts_a_transfer_then_aborts", "--test-threads=1", "--quiet"])
        .env(ABORT_ENV, "1")
        .env(p2pmetrics::SOCKET_ENV, &d.socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(!child.wait().unwrap().success(), "the child aborted");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let m = d.scrape();
        seen.push(m.get("p2p_transfers_active"));
        if m.get("p2p_transfers_active") == Some(0.0) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.last().copied().flatten(), Some(0.0), "active transfers seen: {seen:?}");
    let m = d.scrape();
    assert_eq!(m.value("p2pmetricsd_datagrams_received_total"), 1.0, "the child's +1 arrived");
    assert_eq!(m.value("p2pmetricsd_processes_withdrawn_total"), 1.0);
}
