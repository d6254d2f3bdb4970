//! Validation and canonical encoding of wire protocol v1 (Clients/PROTOCOL.md sections 1 and 3).
//!
//! Plain code without sockets: a [`Datagram`] is a pending datagram in a buffer allocated once,
//! with the series table of PROTOCOL.md 1.2 so that a series already in it costs one sample
//! record of a few bytes.

use crate::Error;

pub(crate) const MAGIC: u8 = 0xF5;
const TAG_SERIES: u8 = 0x01;
const TAG_DROPPED: u8 = 0x02;

/// Largest datagram a client sends, in bytes (drop report included).
pub const MAX_DATAGRAM: usize = 8192;
/// Room before the records for the magic byte and a drop report (tag + 10-byte varint).
pub(crate) const HEADER: usize = 12;
const CAPACITY: usize = MAX_DATAGRAM - HEADER;
/// Series remembered for reuse within one datagram (later ones are still valid, never reused).
const SLOTS: usize = 64;
const MAX_SERIES: u32 = 4096;
/// Room kept for the fold of the transfer debt: a series record and a sample (37 bytes at most).
const DEBT_ROOM: usize = 40;
const MAX_NAME: usize = 200;
const MAX_LABELS: usize = 16;
const MAX_LABEL_NAME: usize = 100;
const MAX_LABEL_VALUE: usize = 1024;
const MAX_DISTINCT_KEY: usize = 1024;
const MAX_TOPK_KEY: usize = 128;

/// The kind of a sample: the high nibble of its record tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter = 1,
    GaugeSet = 2,
    GaugeAdd = 3,
    Histogram = 4,
    Distinct = 5,
    TopK = 6,
}

/// A sample's value as the caller gave it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    U64(u64),
    F64(f64),
    Key(&'a [u8]),
}

/// Labels as callers pass them: `(name, value)` pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// One sample of a call, validated by [`Sample::validate`] before it is encoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub labels: Labels<'a>,
    pub value: Value<'a>,
}

/// A helper's label list: its own label (if any) followed by the caller's, on the stack.
pub(crate) struct LabelList<'a> {
    labels: [(&'a str, &'a str); MAX_LABELS],
    len: usize,
}

impl<'a> LabelList<'a> {
    /// `own` first, then `extra`; `Error::Invalid` when together they exceed 16 labels.
    pub fn join(own: Option<(&'a str, &'a str)>, extra: Labels<'a>) -> Result<Self, Error> {
        let mut list = LabelList { labels: [("", ""); MAX_LABELS], len: 0 };
        if let Some(label) = own {
            list.labels[0] = label;
            list.len = 1;
        }
        if extra.len() > MAX_LABELS - list.len {
            return Err(Error::Invalid("more than 16 labels"));
        }
        list.labels[list.len..list.len + extra.len()].copy_from_slice(extra);
        list.len += extra.len();
        Ok(list)
    }

    pub fn as_slice(&self) -> Labels<'_> {
        &self.labels[..self.len]
    }
}

fn metric_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME || !(b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':') {
        return false;
    }
    if !b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'.')) {
        return false;
    }
    // An exposed form starting with "p2pmetricsd_" is reserved for the daemon's self-metrics.
    !(b.len() >= 12 && &b[..11] == b"p2pmetricsd" && matches!(b[11], b'_' | b'.'))
}

fn label_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && !b.starts_with(b"__")
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The value rules of PROTOCOL.md 1.3 for numeric samples: finite, and >= 0 for counters;
/// gauge sets take anything.
pub(crate) fn value_ok(kind: Kind, value: f64) -> bool {
    kind == Kind::GaugeSet || (value.is_finite() && !(kind == Kind::Counter && value < 0.0))
}

impl Sample<'_> {
    /// Checks the sample against PROTOCOL.md 1.3-1.5, so that the daemon cannot reject it.
    pub fn validate(&self) -> Result<(), Error> {
        if !metric_name_ok(self.name) {
            return Err(Error::Invalid("metric name"));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(Error::Invalid("more than 16 labels"));
        }
        for (i, &(name, value)) in self.labels.iter().enumerate() {
            if !label_name_ok(name) {
                return Err(Error::Invalid("label name"));
            }
            if value.len() > MAX_LABEL_VALUE {
                return Err(Error::Invalid("label value longer than 1024 bytes"));
            }
            if (self.kind == Kind::Histogram && name == "le") || (self.kind == Kind::TopK && name == "key") {
                return Err(Error::Invalid("reserved label"));
            }
            if self.labels[..i].iter().any(|&(other, _)| other == name) {
                return Err(Error::Invalid("duplicate label"));
            }
        }
        match (self.kind, self.value) {
            (Kind::Distinct, Value::Key(key)) if key.len() <= MAX_DISTINCT_KEY => Ok(()),
            (Kind::TopK, Value::Key(key))
                if !key.is_empty() && key.len() <= MAX_TOPK_KEY && std::str::from_utf8(key).is_ok() =>
            {
                Ok(())
            }
            (Kind::Distinct | Kind::TopK, _) => Err(Error::Invalid("item key")),
            (_, Value::Key(_)) => Err(Error::Invalid("value")),
            (_, Value::U64(_)) => Ok(()),
            (kind, Value::F64(v)) if value_ok(kind, v) => Ok(()),
            (_, Value::F64(_)) => Err(Error::Invalid("value")),
        }
    }
}

const FORM_UVARINT: u8 = 0;
const FORM_SVARINT: u8 = 1;
const FORM_F64: u8 = 2;
const FORM_BYTES: u8 = 3;

/// The canonical form of a value (PROTOCOL.md 3.1) and its varint or f64 bits.
fn value_form(value: Value<'_>) -> (u8, u64) {
    match value {
        Value::Key(key) => (FORM_BYTES, key.len() as u64),
        Value::U64(v) => (FORM_UVARINT, v),
        Value::F64(v) => {
            // Integral iff the conversion to an integer is exact; -0.0 becomes 0.
            if (0.0..18446744073709551616.0).contains(&v) && (v as u64) as f64 == v {
                (FORM_UVARINT, v as u64)
            } else if (-9223372036854775808.0..0.0).contains(&v) && (v as i64) as f64 == v {
                let n = v as i64;
                (FORM_SVARINT, ((n << 1) ^ (n >> 63)) as u64)
            } else {
                (FORM_F64, v.to_bits())
            }
        }
    }
}

/// Bytes of `v` as an unsigned LEB128 varint.
pub(crate) fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_uvarint(buf: &mut [u8], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

fn put_bytes(buf: &mut [u8], at: usize, s: &[u8]) -> usize {
    let at = put_uvarint(buf, at, s.len() as u64);
    buf[at..at + s.len()].copy_from_slice(s);
    at + s.len()
}

fn string_len(s: &[u8]) -> usize {
    uvarint_len(s.len() as u64) + s.len()
}

/// Bytes of a sample record referencing series `index`.
fn sample_len(index: u32, value: Value<'_>) -> usize {
    let (form, bits) = value_form(value);
    let value_len = match value {
        Value::Key(key) => string_len(key),
        _ if form == FORM_F64 => 8,
        _ => uvarint_len(bits),
    };
    1 + uvarint_len(u64::from(index)) + value_len
}

/// Writes a sample record (tag, series index, value in its canonical form) at `at`.
fn put_sample(buf: &mut [u8], at: usize, kind: Kind, index: u32, value: Value<'_>) {
    let (form, bits) = value_form(value);
    buf[at] = (kind as u8) << 4 | form;
    let at = put_uvarint(buf, at + 1, u64::from(index));
    match value {
        Value::Key(key) => {
            put_bytes(buf, at, key);
        }
        _ if form == FORM_F64 => buf[at..at + 8].copy_from_slice(&bits.to_le_bytes()),
        _ => {
            put_uvarint(buf, at, bits);
        }
    }
}

/// FNV-1a over the name and labels, each followed by a 0 byte as separator.
fn series_hash(name: &str, labels: Labels<'_>) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |s: &str| {
        for &b in s.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    eat(name);
    for &(n, v) in labels {
        eat(n);
        eat(v);
    }
    h
}

/// Matches an encoded string at `at`; returns the offset after it.
fn match_string(rec: &[u8], at: usize, s: &str) -> Option<usize> {
    let mut len = [0u8; 10];
    let k = put_uvarint(&mut len, 0, s.len() as u64);
    let end = at + k + s.len();
    (rec.get(at..at + k)? == &len[..k] && rec.get(at + k..end)? == s.as_bytes()).then_some(end)
}

#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    offset: u32,
    len: u32,
}

/// The pending datagram: records after room for the header, and the series table.
pub(crate) struct Datagram {
    buf: Box<[u8]>,
    /// Bytes of records in `buf[HEADER..]`.
    len: usize,
    series: u32,
    slots: [Slot; SLOTS],
    used_slots: usize,
    /// Changes whenever the datagram starts afresh (series handles cache indices of one).
    generation: u32,
    /// Room (and a series record) kept for the fold of the transfer debt.
    keep_debt_room: bool,
}

/// Where an append may be rolled back to (a group of samples that must travel together).
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    len: usize,
    series: u32,
    used_slots: usize,
}

impl Datagram {
    pub fn new() -> Self {
        Datagram { buf: vec![0u8; HEADER + CAPACITY].into_boxed_slice(), len: 0, series: 0, slots: [Slot::default(); SLOTS], used_slots: 0, generation: 0, keep_debt_room: false }
    }

    /// While transfer adds wait to be resent (the debt), room for their fold is kept, so that it
    /// always fits in the next datagram (and a -1 never travels before its kept +1).
    pub fn keep_debt_room(&mut self, keep: bool) {
        self.keep_debt_room = keep;
    }

    /// Bytes left for records.
    fn room(&self) -> usize {
        let kept = if self.keep_debt_room { DEBT_ROOM } else { 0 };
        CAPACITY.saturating_sub(self.len + kept)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn mark(&self) -> Mark {
        Mark { len: self.len, series: self.series, used_slots: self.used_slots }
    }

    pub fn rollback(&mut self, mark: Mark) {
        self.len = mark.len;
        self.series = mark.series;
        self.used_slots = mark.used_slots;
    }

    pub fn clear(&mut self) {
        self.rollback(Mark { len: 0, series: 0, used_slots: 0 });
        self.generation = self.generation.wrapping_add(1);
    }

    /// `generation << 32 | index`: where a series handle finds its series record again.
    pub fn series_key(&self, index: u32) -> u64 {
        u64::from(self.generation) << 32 | u64::from(index)
    }

    /// The index of a series handle's record when `key` is still valid in this datagram.
    pub fn cached_index(&self, key: u64) -> Option<u32> {
        let index = key as u32;
        ((key >> 32) as u32 == self.generation && index < self.series).then_some(index)
    }

    /// Appends one numeric sample of the series already defined at `index`: just the tag, the
    /// index and the value. `Err(Error::TooLarge)` when it does not fit.
    pub fn append_indexed(&mut self, kind: Kind, index: u32, value: Value<'_>) -> Result<(), Error> {
        let need = sample_len(index, value);
        if need > self.room() {
            return Err(Error::TooLarge);
        }
        put_sample(&mut self.buf, HEADER + self.len, kind, index, value);
        self.len += need;
        Ok(())
    }

    /// Whether the series record at `offset` encodes exactly `name` and `labels`, in order.
    fn same_series(&self, offset: usize, name: &str, labels: Labels<'_>) -> bool {
        let rec = &self.buf[..HEADER + self.len];
        let mut at = match match_string(rec, offset + 1, name) {
            Some(at) => at,
            None => return false,
        };
        if rec[at] as usize != labels.len() {
            return false; // at most 16 labels: a one-byte varint
        }
        at += 1;
        for &(n, v) in labels {
            match match_string(rec, at, n).and_then(|at| match_string(rec, at, v)) {
                Some(next) => at = next,
                None => return false,
            }
        }
        true
    }

    /// Appends one validated sample, with its series record unless the same series is already
    /// in this datagram; returns the series index. `Err(Error::TooLarge)` when it does not fit;
    /// nothing changes then.
    pub fn append(&mut self, s: &Sample<'_>) -> Result<u32, Error> {
        let mut record_len =
            1 + string_len(s.name.as_bytes()) + uvarint_len(s.labels.len() as u64);
        for &(n, v) in s.labels {
            record_len += string_len(n.as_bytes()) + string_len(v.as_bytes());
        }
        let hash = series_hash(s.name, s.labels);
        let mut index = self.series;
        for (i, slot) in self.slots[..self.used_slots].iter().enumerate() {
            if slot.hash == hash
                && slot.len as usize == record_len
                && self.same_series(slot.offset as usize, s.name, s.labels)
            {
                index = i as u32;
                record_len = 0;
                break;
            }
        }
        let need = record_len + sample_len(index, s.value);
        let max_series = MAX_SERIES - u32::from(self.keep_debt_room);
        if need > self.room() || (record_len > 0 && self.series >= max_series) {
            return Err(Error::TooLarge);
        }
        let buf = &mut self.buf[..];
        let mut at = HEADER + self.len;
        if record_len > 0 {
            if self.used_slots < SLOTS {
                self.slots[self.used_slots] = Slot { hash, offset: at as u32, len: record_len as u32 };
                self.used_slots += 1;
            }
            self.series += 1;
            buf[at] = TAG_SERIES;
            at = put_bytes(buf, at + 1, s.name.as_bytes());
            at = put_uvarint(buf, at, s.labels.len() as u64);
            for &(n, v) in s.labels {
                at = put_bytes(buf, at, n.as_bytes());
                at = put_bytes(buf, at, v.as_bytes());
            }
        }
        put_sample(buf, at, s.kind, index, s.value);
        self.len += need;
        Ok(index)
    }

    /// Writes the magic byte and, when `drops` > 0, a drop report just before the records;
    /// returns the whole datagram.
    pub fn finish(&mut self, drops: u64) -> &[u8] {
        let mut header = [0u8; HEADER];
        header[0] = MAGIC;
        let mut n = 1;
        if drops > 0 {
            header[1] = TAG_DROPPED;
            n = put_uvarint(&mut header, 2, drops);
        }
        let start = HEADER - n;
        self.buf[start..HEADER].copy_from_slice(&header[..n]);
        &self.buf[start..HEADER + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(samples: &[Sample<'_>], drops: u64) -> Vec<u8> {
        let mut d = Datagram::new();
        for s in samples {
            s.validate().unwrap();
            d.append(s).unwrap();
        }
        d.finish(drops).to_vec()
    }

    #[test]
    fn worked_example_of_the_protocol() {
        let s = Sample { kind: Kind::Counter, name: "p2p.image.downloads.total", labels: &[], value: Value::U64(1) };
        let mut want = vec![0xf5, 0x01, 25];
        want.extend_from_slice(b"p2p.image.downloads.total");
        want.extend_from_slice(&[0x00, 0x10, 0x00, 0x01]);
        assert_eq!(encode(&[s], 0), want);
        assert_eq!(want.len(), 32); // magic, tag, name (1 + 25), label count, 3-byte sample
    }

    #[test]
    fn reserved_names_and_labels_are_refused() {
        let bad = |name: &str, labels: Labels<'_>, kind: Kind| Sample { kind, name, labels, value: Value::F64(1.0) }.validate();
        assert!(bad("p2pmetricsd_x", &[], Kind::Counter).is_err());
        assert!(bad("p2pmetricsd.x", &[], Kind::Counter).is_err());
        assert!(bad("p2pmetricsdx", &[], Kind::Counter).is_ok());
        assert!(bad("1abc", &[], Kind::Counter).is_err());
        assert!(bad("h", &[("le", "1")], Kind::Histogram).is_err());
        assert!(bad("h", &[("le", "1")], Kind::Counter).is_ok());
        assert!(bad("h", &[("__x", "1")], Kind::Counter).is_err());
        assert!(bad("h", &[("a", "1"), ("a", "2")], Kind::Counter).is_err());
    }
}
