//! Encoder properties over random calls, checked by an independent decoder of PROTOCOL.md:
//! every call comes back in order with its exact value in its canonical form, datagrams stay
//! within 8,192 bytes, series are defined once per datagram and referenced backwards only,
//! varints are minimal, and a helper's samples never straddle two datagrams. Half the numeric
//! calls go through series handles, mixed with generic calls of the same series.

mod common;

use common::Collector;
use p2pmetrics::{Client, Mode, MAX_DATAGRAM};

/// xorshift64*: deterministic pseudo-random numbers without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    U(u64),
    S(i64),
    F(u64), // f64 bits
    Key(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq)]
struct Decoded {
    kind: u8,
    name: String,
    labels: Vec<(String, String)>,
    value: Val,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let v = self.b[self.at];
        self.at += 1;
        v
    }
    fn uvarint(&mut self) -> u64 {
        let (mut v, mut shift, start) = (0u64, 0, self.at);
        loop {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                assert!(self.at - start == 1 || b != 0, "non-minimal varint");
                return v;
            }
            shift += 7;
            assert!(shift < 70, "varint too long");
        }
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = self.uvarint() as usize;
        let v = self.b[self.at..self.at + n].to_vec();
        self.at += n;
        v
    }
    fn string(&mut self) -> String {
        String::from_utf8(self.bytes()).expect("UTF-8")
    }
}

/// Decodes one datagram: (drop report, samples). Panics on anything PROTOCOL.md refuses.
fn decode(b: &[u8]) -> (Option<u64>, Vec<Decoded>) {
    assert!(b.len() <= MAX_DATAGRAM && b.len() > 1, "datagram of {} bytes", b.len());
    assert_eq!(b[0], 0xF5);
    let mut r = Reader { b, at: 1 };
    let mut series: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut drops = None;
    let mut samples = Vec::new();
    while r.at < b.len() {
        let tag = r.byte();
        match tag {
            0x01 => {
                let name = r.string();
                let n = r.uvarint();
                let labels = (0..n).map(|_| (r.string(), r.string())).collect::<Vec<_>>();
                let entry = (name, labels);
                assert!(!series.iter().take(64).any(|s| *s == entry), "series {entry:?} defined twice");
                series.push(entry);
            }
            0x02 => {
                assert!(r.at == 2, "the drop report is the first record");
                drops = Some(r.uvarint());
            }
            _ => {
                let (kind, form) = (tag >> 4, tag & 0x0f);
                let index = r.uvarint() as usize;
                assert!(index < series.len(), "forward series reference");
                let value = match form {
                    0 => Val::U(r.uvarint()),
                    1 => {
                        let z = r.uvarint();
                        Val::S(((z >> 1) as i64) ^ -((z & 1) as i64))
                    }
                    2 => {
                        let mut bits = [0u8; 8];
                        bits.copy_from_slice(&b[r.at..r.at + 8]);
                        r.at += 8;
                        Val::F(u64::from_le_bytes(bits))
                    }
                    3 => Val::Key(r.bytes()),
                    _ => panic!("form {form}"),
                };
                let (name, labels) = series[index].clone();
                samples.push(Decoded { kind, name, labels, value });
            }
        }
    }
    (drops, samples)
}

/// The canonical encoding of a double (PROTOCOL.md 3.1).
fn canonical(v: f64) -> Val {
    if v.fract() == 0.0 && (0.0..18446744073709551616.0).contains(&v) {
        Val::U(v as u64)
    } else if v.fract() == 0.0 && (-9223372036854775808.0..0.0).contains(&v) {
        Val::S(v as i64)
    } else {
        Val::F(v.to_bits())
    }
}

fn random_f64(rng: &mut Rng) -> f64 {
    match rng.below(8) {
        0 => rng.below(1000) as f64,
        1 => -(rng.below(1 << 40) as f64),
        2 => rng.below(1 << 20) as f64 / 1024.0,
        3 => f64::from_bits(rng.next()),
        4 => [0.0, -0.0, 2f64.powi(63), -(2f64.powi(63)), 2f64.powi(64), 1e300, 5e-324][rng.below(7) as usize],
        5 => (rng.next() >> 11) as f64,
        6 => -(rng.below(100) as f64) - 0.5,
        _ => rng.below(1 << 53) as f64 * 3.0,
    }
}

#[test]
fn random_calls_decode_to_themselves_in_canonical_form() {
    const NAMES: [&str; 5] = ["a", "p2p.x.total", "b:c", "_d.e", "long.name.of.a.metric"];
    const LABELS: [&[(&str, &str)]; 6] =
        [&[], &[("k", "v")], &[("v", "1"), ("k", "v")], &[("k", "v"), ("v", "1")], &[("peer", "nœud-é")], &[("empty", "")]];
    let r = Collector::new();
    let c = Client::open(&r.path).unwrap();
    c.set_mode(Mode::Blocking { timeout: std::time::Duration::from_secs(5) });
    // A series handle for every name and label list: half the numeric calls go through them.
    let handles: Vec<_> = NAMES.iter().flat_map(|&n| LABELS.iter().map(move |&l| (n, l))).map(|(n, l)| c.series(n, l).unwrap()).collect();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _round in 0..20 {
        let mut want = Vec::new();
        let batch = c.batch();
        for _ in 0..rng.below(3000) + 1 {
            let (name_i, labels_i) = (rng.below(5) as usize, rng.below(6) as usize);
            let (name, labels) = (NAMES[name_i], LABELS[labels_i]);
            let h = (rng.below(2) == 0).then(|| &handles[name_i * 6 + labels_i]);
            let own = |s: &[(&str, &str)]| s.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>();
            let (kind, value) = match rng.below(7) {
                0 => {
                    let v = rng.next() >> rng.below(64);
                    h.map_or_else(|| c.counter_add(name, v, labels), |h| h.counter_add(v)).unwrap();
                    (1, Val::U(v))
                }
                1 => {
                    let v = random_f64(&mut rng);
                    let v = if v.is_finite() { v.abs() } else { 1.5 };
                    h.map_or_else(|| c.counter_add_f64(name, v, labels), |h| h.counter_add_f64(v)).unwrap();
                    (1, canonical(v))
                }
                2 => {
                    let v = random_f64(&mut rng);
                    h.map_or_else(|| c.gauge_set(name, v, labels), |h| h.gauge_set(v)).unwrap();
                    (2, canonical(v))
                }
                3 => {
                    let v = random_f64(&mut rng);
                    let v = if v.is_finite() { v } else { -2.5 };
                    h.map_or_else(|| c.gauge_add(name, v, labels), |h| h.gauge_add(v)).unwrap();
                    (3, canonical(v))
                }
                4 => {
                    let v = random_f64(&mut rng);
                    let v = if v.is_finite() { v } else { 0.125 };
                    h.map_or_else(|| c.histogram_observe(name, v, labels), |h| h.histogram_observe(v)).unwrap();
                    (4, canonical(v))
                }
                5 => {
                    let key: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
                    c.distinct_add(name, &key, labels).unwrap();
                    (5, Val::Key(key))
                }
                _ => {
                    let key = format!("k{}é", rng.below(1000));
                    c.topk_add(name, &key, labels).unwrap();
                    (6, Val::Key(key.into_bytes()))
                }
            };
            want.push(Decoded { kind, name: name.to_owned(), labels: own(labels), value });
        }
        batch.end().unwrap();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let (drops, samples) = decode(&r.recv().expect("datagram"));
            assert_eq!(drops, None);
            got.extend(samples);
        }
        assert_eq!(r.drain(), 0);
        // NaN bits survive as NaN (gauge_set takes it); compare everything else exactly.
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
    }
    assert_eq!(c.dropped(), 0);
}

#[test]
fn a_helper_never_straddles_two_datagrams() {
    let r = Collector::new();
    let c = Client::open(&r.path).unwrap();
    c.set_mode(Mode::Blocking { timeout: std::time::Duration::from_secs(5) });
    let batch = c.batch();
    const CALLS: usize = 3000;
    for i in 0..CALLS {
        let peer = format!("node-{}", i % 97); // new series often: datagrams fill at odd offsets
        c.record_image_download_labels("img", false, std::time::Duration::from_millis(i as u64), &[("peer", &peer)]).unwrap();
    }
    batch.end().unwrap();
    let mut total = 0;
    let mut datagrams = 0;
    while total < 3 * CALLS {
        let (_, samples) = decode(&r.recv().expect("datagram"));
        assert_eq!(samples.len() % 3, 0, "a helper's samples were split");
        for group in samples.chunks(3) {
            assert_eq!(
                [group[0].name.as_str(), group[1].name.as_str(), group[2].name.as_str()],
                ["p2p.image.downloads.total", "p2p.image.downloads.failed", "p2p.transfer.duration"]
            );
            assert!(group.iter().all(|s| s.labels == group[0].labels));
        }
        total += samples.len();
        datagrams += 1;
    }
    assert_eq!(total, 3 * CALLS);
    assert!(datagrams > 5);
}

/// Sum of the `p2p.transfers.active` adds in decoded samples.
fn active_adds(samples: &[Decoded]) -> i64 {
    samples
        .iter()
        .filter(|s| s.name == "p2p.transfers.active" && s.kind == 3)
        .map(|s| match s.value {
            Val::U(v) => v as i64,
            Val::S(v) => v,
            ref other => panic!("transfer add {other:?}"),
        })
        .sum()
}

/// A transfer's +1 that was dropped is kept and resent; room is kept for it in every datagram,
/// so it travels with (or before) the datagram that holds its -1: applied datagram by datagram,
/// `p2p.transfers.active` never goes below zero. Every fill level near a full datagram.
#[test]
fn a_kept_transfer_add_travels_no_later_than_its_end() {
    let mut scenarios = 0;
    for fillers in 2380..2500 {
        let r = common::Receiver::new();
        let c = Client::open(&r.path).unwrap();
        c.set_mode(Mode::Immediate);
        while c.counter_add("filler", 1, &[]).is_ok() {} // the receiver's queue is full
        let guard = c.start_transfer(); // its +1 is dropped: kept as debt
        assert_eq!(guard.start_result(), Err(p2pmetrics::Error::QueueFull));
        let batch = c.batch();
        c.counter_add("f", 1, &[]).unwrap(); // pending: the flusher leaves the debt to us
        r.drain();
        for i in 1..fillers {
            c.counter_add("f", if i % 3 == fillers % 3 { 200 } else { 1 }, &[]).unwrap();
        }
        guard.end().unwrap();
        batch.end().unwrap();
        c.flush().unwrap();
        let mut active = 0;
        while let Some(d) = r.recv_now() {
            let (_, samples) = decode(&d);
            active += active_adds(&samples);
            assert!(active >= 0, "{fillers} fillers: the -1 arrived before its kept +1");
        }
        assert_eq!(active, 0, "{fillers} fillers");
        scenarios += 1;
    }
    assert_eq!(scenarios, 120);
}
