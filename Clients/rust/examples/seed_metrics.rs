//! A drop-in replacement for the seed system's metrics module (`metrics_otel`): the same public
//! P2P functions with the same names and signatures, implemented on this crate instead of
//! OpenTelemetry. Copy the module into the seed's code base (and add the path dependency); its
//! callers do not change. The socket is `$P2PM_SOCKET`, else /run/p2pmetricsd/ingest.sock.
//!
//! Run: `P2PM_SOCKET=/path/to/ingest.sock cargo run --example seed_metrics`

pub mod metrics_otel {
    /// Record P2P image import operation
    pub fn record_p2p_image_import(artifact_type: &str, success: bool, size_bytes: u64) {
        p2pmetrics::record_image_import(artifact_type, success, size_bytes);
    }

    /// Record P2P image download operation
    pub fn record_p2p_image_download(image_id: &str, success: bool, duration_secs: f64) {
        let _ = p2pmetrics::global().record_image_download_secs(image_id, success, duration_secs);
    }

    /// Record P2P chunk transfer
    pub fn record_p2p_chunk_transfer(chunk_size: u64, was_deduplicated: bool) {
        p2pmetrics::record_chunk_transfer(chunk_size, was_deduplicated);
    }

    /// Record P2P image verification
    pub fn record_p2p_verification(success: bool, verification_type: &str) {
        p2pmetrics::record_verification(success, verification_type);
    }

    /// Record P2P cache access
    pub fn record_p2p_cache_access(hit: bool, cache_type: &str) {
        p2pmetrics::record_cache_access(hit, cache_type);
    }

    /// Start tracking a P2P transfer
    pub fn start_p2p_transfer() -> P2pTransferGuard {
        P2pTransferGuard { _guard: p2pmetrics::start_transfer() }
    }

    /// Guard for tracking P2P transfer duration: `p2p.transfers.active` -1 and the duration
    /// observed when it drops.
    pub struct P2pTransferGuard {
        _guard: p2pmetrics::TransferGuard<'static>,
    }
}

use metrics_otel::*;

struct Chunk {
    size: u64,
}

/// The seed guide's example code, as written there.
fn main() {
    let total_size = 3 << 30;
    // Record successful import
    record_p2p_image_import("microvm", true, total_size);

    // Track transfer with automatic duration recording
    {
        let _guard = start_p2p_transfer();
        // Transfer happens here
        // Duration recorded when guard drops
    }

    // Record chunk operations
    let chunks = (0..10).map(|i| Chunk { size: 4096 * (i + 1) });
    for (i, chunk) in chunks.enumerate() {
        let already_have_chunk = i % 4 == 0;
        if already_have_chunk {
            record_p2p_chunk_transfer(chunk.size, true); // deduplicated
        } else {
            record_p2p_chunk_transfer(chunk.size, false); // transferred
        }
    }

    // Record verification result
    let verify_nar_hash = || -> Result<(), ()> { Err(()) };
    match verify_nar_hash() {
        Ok(_) => record_p2p_verification(true, "nar_hash"),
        Err(_) => record_p2p_verification(false, "nar_hash"),
    }
    record_p2p_image_download("img-1", true, 2.5);
    record_p2p_cache_access(true, "chunk");
    record_p2p_cache_access(false, "vm_image");
    // Nothing to flush by hand: pending samples are sent when main returns.
}
