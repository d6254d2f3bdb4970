//! Series handles: a name and labels validated once, for hot loops (the C client's
//! `p2pm_series`).

use std::sync::atomic::AtomicU64;

use crate::encode::{value_ok, Kind, Labels, Sample, Value};
use crate::{Client, Error};

/// A series resolved once ([`Client::series`]): its name and labels are validated when it is
/// created, and while its series record is in the client's pending datagram a sample through it
/// costs only the value's encoding (a few bytes) under the client's lock. `Send + Sync`: any
/// number of threads may use one handle. Same sending rules and results as the generic calls.
pub struct Series<'a> {
    client: Client,
    name: &'a str,
    labels: Labels<'a>,
    /// No `le` label: histogram observations allowed.
    histogram_ok: bool,
    /// Where its series record is in the pending datagram (generation and index).
    cached: AtomicU64,
}

impl Client {
    /// A handle for `name{labels}` on this client; `Err(Error::Invalid)` for a name or label
    /// list the protocol refuses.
    pub fn series<'a>(&self, name: &'a str, labels: Labels<'a>) -> Result<Series<'a>, Error> {
        Sample { kind: Kind::GaugeSet, name, labels, value: Value::F64(0.0) }.validate()?;
        Ok(Series {
            client: self.clone(),
            name,
            labels,
            histogram_ok: labels.iter().all(|&(n, _)| n != "le"),
            cached: AtomicU64::new(u64::MAX), // no datagram yet
        })
    }
}

impl Series<'_> {
    fn submit(&self, kind: Kind, value: Value<'_>) -> Result<(), Error> {
        let valid = match value {
            Value::F64(v) => value_ok(kind, v),
            _ => true,
        };
        if !valid || (kind == Kind::Histogram && !self.histogram_ok) {
            return Err(Error::Invalid("value"));
        }
        let sample = Sample { kind, name: self.name, labels: self.labels, value };
        self.client.submit_indexed(&sample, &self.cached)
    }

    /// Adds an exact 64-bit integer to the counter.
    pub fn counter_add(&self, value: u64) -> Result<(), Error> {
        self.submit(Kind::Counter, Value::U64(value))
    }

    /// Adds `value` (finite, >= 0) to the counter.
    pub fn counter_add_f64(&self, value: f64) -> Result<(), Error> {
        self.submit(Kind::Counter, Value::F64(value))
    }

    /// Sets the gauge (any value).
    pub fn gauge_set(&self, value: f64) -> Result<(), Error> {
        self.submit(Kind::GaugeSet, Value::F64(value))
    }

    /// Adds `delta` (finite) to the gauge.
    pub fn gauge_add(&self, delta: f64) -> Result<(), Error> {
        self.submit(Kind::GaugeAdd, Value::F64(delta))
    }

    /// Records one observation (finite) into the histogram (not with an `le` label).
    pub fn histogram_observe(&self, value: f64) -> Result<(), Error> {
        self.submit(Kind::Histogram, Value::F64(value))
    }
}
