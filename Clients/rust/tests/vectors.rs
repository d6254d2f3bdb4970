//! The shared test vectors (Clients/testdata/vectors.txt), byte for byte: every `vector` is
//! replayed into one batch and the datagram compared with its bytes. Decoder-only kinds
//! (`reject`, `accept`) are skipped, as the C client's test does.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{hex, Receiver};
use p2pmetrics::{Client, Error, Mode, Series};

struct Call {
    kind: String,
    name: String,
    value: String,
    labels: Vec<(String, String)>,
}

struct Vector {
    id: String,
    drops: u64,
    calls: Vec<Call>,
    hex: String,
}

/// `%XX` encodes any byte that is not printable ASCII other than `%`, `=`, space.
fn unescape(token: &str) -> Vec<u8> {
    let b = token.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&token[i + 1..i + 3], 16).expect("escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn text(token: &str) -> String {
    String::from_utf8(unescape(token)).expect("UTF-8 token")
}

fn load() -> Vec<Vector> {
    let path = match std::env::var_os("P2PM_VECTORS") {
        Some(p) => p.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors.txt"),
    };
    let file = std::fs::read_to_string(&path).expect("vectors.txt");
    let mut vectors = Vec::new();
    let mut current: Option<Vector> = None;
    for line in file.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, current.as_mut()) {
            ("vector", _) => current = Some(Vector { id: rest.to_owned(), drops: 0, calls: vec![], hex: String::new() }),
            ("end", _) => vectors.extend(current.take()),
            ("drops", Some(v)) => v.drops = rest.parse().unwrap(),
            ("bytes", Some(v)) => v.hex = rest.to_owned(),
            ("call", Some(v)) => {
                let mut tokens = rest.split(' ');
                let kind = tokens.next().unwrap().to_owned();
                let name = text(tokens.next().unwrap());
                let value = tokens.next().unwrap().to_owned();
                let labels = tokens
                    .map(|t| {
                        let (k, v) = t.split_once('=').expect("label=value");
                        (text(k), text(v))
                    })
                    .collect();
                v.calls.push(Call { kind, name, value, labels });
            }
            _ => {} // reject/accept vectors and their lines: decoder-only
        }
    }
    assert!(vectors.len() >= 19, "only {} vectors in {}", vectors.len(), path.display());
    vectors
}

/// Replays one call; `exact`: counters whose value is an integer go through `counter_add(u64)`.
fn call(client: &Client, c: &Call, exact: bool) -> Result<(), Error> {
    let labels: Vec<(&str, &str)> = c.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let labels = &labels[..];
    let number = || c.value.parse::<f64>().unwrap_or_else(|_| panic!("value {}", c.value));
    match c.kind.as_str() {
        "counter_add" => match c.value.parse::<u64>() {
            Ok(v) if exact => client.counter_add(&c.name, v, labels),
            _ => client.counter_add_f64(&c.name, number(), labels),
        },
        "gauge_set" => client.gauge_set(&c.name, number(), labels),
        "gauge_add" => client.gauge_add(&c.name, number(), labels),
        "histogram_observe" => client.histogram_observe(&c.name, number(), labels),
        "distinct_add" => client.distinct_add(&c.name, &unescape(&c.value), labels),
        "topk_add" => client.topk_add(&c.name, &text(&c.value), labels),
        other => panic!("unknown call kind {other}"),
    }
}

/// Makes exactly `drops` real drops: fills the receiver's queue until a send fails, drops the
/// rest, then empties the queue.
fn make_drops(client: &Client, r: &Receiver, drops: u64) {
    if drops == 0 {
        return;
    }
    let mut sent = 0;
    while client.counter_add("filler", 1, &[]).is_ok() {
        sent += 1;
        assert!(sent < 100_000);
    }
    for _ in 1..drops {
        assert_eq!(client.counter_add("filler", 1, &[]), Err(Error::QueueFull));
    }
    assert_eq!(client.dropped(), drops);
    assert_eq!(r.drain(), sent);
}

/// Replays one numeric call through a series handle, one handle per distinct series (so that
/// repeated series take the handle's cached path). `None` for item-key calls (no handles).
fn call_through_handle<'v>(client: &Client, handles: &mut Vec<(&'v Call, Series<'v>)>, c: &'v Call, labels: &'v [(&'v str, &'v str)]) -> Option<Result<(), Error>> {
    let position = handles.iter().position(|(other, _)| other.name == c.name && other.labels == c.labels);
    let index = match position {
        Some(i) => i,
        None => {
            handles.push((c, client.series(&c.name, labels).ok()?));
            handles.len() - 1
        }
    };
    let h = &handles[index].1;
    let number = c.value.parse::<f64>().ok()?;
    Some(match c.kind.as_str() {
        "counter_add" => match c.value.parse::<u64>() {
            Ok(v) => h.counter_add(v),
            Err(_) => h.counter_add_f64(number),
        },
        "gauge_set" => h.gauge_set(number),
        "gauge_add" => h.gauge_add(number),
        "histogram_observe" => h.histogram_observe(number),
        _ => return None,
    })
}

/// Every vector made only of numeric calls, replayed through series handles.
#[test]
fn series_handles_replay_the_numeric_vectors_byte_for_byte() {
    let vectors = load();
    let mut replayed = 0;
    for v in vectors.iter().filter(|v| v.calls.iter().all(|c| !c.kind.ends_with("_add") || c.kind == "counter_add" || c.kind == "gauge_add")) {
        let labels: Vec<Vec<(&str, &str)>> =
            v.calls.iter().map(|c| c.labels.iter().map(|(k, l)| (k.as_str(), l.as_str())).collect()).collect();
        let r = Receiver::new();
        let client = Client::open(&r.path).unwrap();
        client.set_mode(Mode::Immediate);
        make_drops(&client, &r, v.drops);
        let mut handles = Vec::new();
        let batch = client.batch();
        for (c, l) in v.calls.iter().zip(&labels) {
            let result = call_through_handle(&client, &mut handles, c, l).expect("numeric call");
            assert_eq!(result, Ok(()), "vector {}", v.id);
        }
        batch.end().unwrap();
        assert_eq!(hex(&r.recv().expect("one datagram")), v.hex, "vector {} through handles", v.id);
        replayed += 1;
    }
    assert!(replayed >= 12, "{replayed} numeric vectors");
}

fn replay(v: &Vector, exact: bool) -> String {
    let r = Receiver::new();
    let client = Client::open(&r.path).unwrap();
    client.set_mode(Mode::Immediate);
    make_drops(&client, &r, v.drops);
    let batch = client.batch();
    for c in &v.calls {
        assert_eq!(call(&client, c, exact), Ok(()), "vector {}", v.id);
    }
    assert_eq!(r.drain(), 0, "vector {}: nothing sent before the batch ends", v.id);
    assert_eq!(batch.end(), Ok(()));
    let got = hex(&r.recv().expect("one datagram"));
    assert_eq!(r.drain(), 0, "vector {}: exactly one datagram", v.id);
    assert_eq!(client.dropped(), v.drops);
    got
}

#[test]
fn every_vector_byte_for_byte() {
    let vectors = load();
    for v in &vectors {
        assert_eq!(replay(v, true), v.hex, "vector {}", v.id);
        assert_eq!(replay(v, false), v.hex, "vector {} (counters as f64)", v.id);
    }
}

fn find<'a>(vectors: &'a [Vector], id: &str) -> &'a str {
    &vectors.iter().find(|v| v.id == id).unwrap_or_else(|| panic!("vector {id} missing")).hex
}

/// The seed helpers, one call per datagram, reproduce the seed_* vectors.
#[test]
fn helpers_match_the_seed_vectors() {
    let vectors = load();
    let r = Receiver::new();
    let client = Client::open(&r.path).unwrap();
    client.set_mode(Mode::Immediate);
    let expect = |result: Result<(), Error>, id: &str| {
        assert_eq!(result, Ok(()), "{id}");
        assert_eq!(hex(&r.recv().expect("datagram")), find(&vectors, id), "{id} (helper)");
    };
    expect(client.record_image_import("microvm", true, 1073741824), "seed_import_success");
    expect(client.record_image_import("container", false, 4096), "seed_import_failure");
    expect(client.record_image_download("img-1", false, Duration::from_secs_f64(12.5)), "seed_download_failure");
    expect(client.record_chunk_transfer_hash(4096, false, "sha256:4f2a"), "seed_chunk_transfer_with_hash");
    expect(client.record_chunk_request("sha256:4f2a"), "seed_chunk_request");

    // The transfer guard: +1 at the start, -1 and the duration at the end (its seconds differ).
    let batch = client.batch();
    let guard = client.start_transfer();
    assert_eq!(guard.end(), Ok(()));
    batch.end().unwrap();
    let want = find(&vectors, "seed_transfer_guard");
    let got = hex(&r.recv().unwrap());
    assert_eq!(got.len(), want.len());
    assert_eq!(got[..got.len() - 16], want[..want.len() - 16], "seed_transfer_guard up to the f64 seconds");

    // Keys and labels the protocol refuses are refused at the caller: nothing sent.
    assert!(matches!(client.record_chunk_request(""), Err(Error::Invalid(_))));
    assert!(matches!(client.topk_add("t", "x", &[("key", "v")]), Err(Error::Invalid(_))));
    assert!(matches!(client.histogram_observe("h", 1.0, &[("le", "1")]), Err(Error::Invalid(_))));
    assert!(matches!(client.counter_add_f64("c", -1.0, &[]), Err(Error::Invalid(_))));
    assert!(matches!(client.counter_add_f64("c", f64::NAN, &[]), Err(Error::Invalid(_))));
    assert!(matches!(client.gauge_add("g", f64::INFINITY, &[]), Err(Error::Invalid(_))));
    assert!(matches!(client.counter_add("p2pmetricsd_x", 1, &[]), Err(Error::Invalid(_))));
    let duplicate = client.record_image_import_labels("x", true, 1, &[("artifact_type", "y")]);
    assert_eq!(duplicate, Err(Error::Invalid("duplicate label")));
    let too_many: Vec<(String, String)> = (0..16).map(|i| (format!("l{i}"), "v".into())).collect();
    let too_many: Vec<(&str, &str)> = too_many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(matches!(client.record_image_import_labels("x", true, 1, &too_many), Err(Error::Invalid(_))));
    assert!(matches!(client.start_transfer_labels(&[("le", "1")]).start_result(), Err(Error::Invalid(_))));
    assert_eq!(r.drain(), 0);
}
