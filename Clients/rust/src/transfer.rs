//! The transfer guard: `p2p.transfers.active` +1 at the start, -1 and the duration at the end.

use std::time::Instant;

use crate::client::{Client, ACTIVE_TRANSFERS, TRANSFER_DURATION};
use crate::encode::{Kind, Labels, Sample, Value};
use crate::Error;

/// An active transfer ([`Client::start_transfer`], [`crate::start_transfer`]). Ends when dropped
/// — also during a panic unwind — or with [`TransferGuard::end`]: `p2p.transfers.active` -= 1 and
/// `p2p.transfer.duration` observes the seconds since the start, in one datagram.
///
/// The active gauge cannot stick: a +1 or -1 whose datagram is dropped (sidecar absent or
/// stopped) is kept by the client and added to the next datagram that is sent (or to a datagram
/// of its own, tried every [`crate::RECONNECT`] by the flusher), so `p2p.transfers.active`
/// always ends at the number of transfers started and not ended. Ending twice is impossible.
/// A process that dies without unwinding (`panic = "abort"`, a signal) runs no destructor: the
/// sidecar then withdraws the +1s the dead process added and did not take back.
#[must_use = "the transfer ends when this guard is dropped"]
pub struct TransferGuard<'a> {
    client: Client,
    start: Instant,
    labels: Labels<'a>,
    active: bool,
    started: Result<(), Error>,
}

impl Client {
    /// Starts a transfer: `p2p.transfers.active` += 1 now, the end when the guard drops.
    pub fn start_transfer(&self) -> TransferGuard<'static> {
        self.start_transfer_labels(&[])
    }

    /// Like [`Client::start_transfer`]; `labels` (e.g. `&[("peer", "node-7")]`, not `le`) go on
    /// the `p2p.transfer.duration` observation of the end.
    pub fn start_transfer_labels<'a>(&self, labels: Labels<'a>) -> TransferGuard<'a> {
        let mut guard =
            TransferGuard { client: self.clone(), start: Instant::now(), labels, active: false, started: Ok(()) };
        let end = Sample { kind: Kind::Histogram, name: TRANSFER_DURATION, labels, value: Value::F64(0.0) };
        guard.started = end.validate(); // the end could not record its duration: no start either
        if guard.started.is_ok() {
            // From here the +1 is in the client whatever the send does (a dropped +1 is kept and
            // delivered later), so the transfer is active and its end must send the -1.
            guard.active = true;
            let add = Sample { kind: Kind::GaugeAdd, name: ACTIVE_TRANSFERS, labels: &[], value: Value::F64(1.0) };
            guard.started = self.submit(&[add], 1);
        }
        guard
    }
}

impl TransferGuard<'_> {
    /// The result of recording the start (`Err(Error::Invalid)` for labels the end cannot
    /// carry: then nothing was recorded and the end records nothing either).
    pub fn start_result(&self) -> Result<(), Error> {
        self.started
    }

    /// Ends the transfer now and returns the result of its send (on a failure the duration was
    /// dropped and the -1 is kept and delivered later).
    pub fn end(mut self) -> Result<(), Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), Error> {
        if !std::mem::replace(&mut self.active, false) {
            return Ok(());
        }
        let seconds = self.start.elapsed().as_secs_f64();
        let samples = [
            Sample { kind: Kind::GaugeAdd, name: ACTIVE_TRANSFERS, labels: &[], value: Value::F64(-1.0) },
            Sample { kind: Kind::Histogram, name: TRANSFER_DURATION, labels: self.labels, value: Value::F64(seconds) },
        ];
        let result = self.client.submit(&samples, -1);
        if result == Err(Error::TooLarge) {
            // Labels too long to travel with the -1 in one datagram: the -1 alone, never lost.
            let _ = self.client.submit(&samples[..1], -1);
        }
        result
    }
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
