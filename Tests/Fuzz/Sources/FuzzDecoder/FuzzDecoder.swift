// libFuzzer target: one input is one datagram.
//
// It goes through `DatagramDecoder.validate` and the sample/label cursors, through a round trip
// with `DatagramEncoder` (exact values and canonical values), and twice through
// `DatagramInput.ingest` into a fresh, small store, checking the invariants below after each step.
// A violated invariant prints `INVARIANT VIOLATED [name]` and aborts, so libFuzzer saves the input.
//
// While a reported bug is being fixed its check can be skipped: FUZZ_SKIP_CHECKS=name,name.

import P2PMetricsInputDatagram
import P2PMetricsStore
import FuzzSupport
import P2PMetricsWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif


/// A small store: limits low enough that one datagram can reach them, a tiny wire cache so that
/// it is cleared often.
let configuration: StoreConfiguration = {
    var c = StoreConfiguration()
    c.maxSeries = 1_000
    c.maxSeriesPerMetric = 400
    c.wireCacheCapacity = 32
    return c
}()

let catalogTypes: [String: MetricType] = Dictionary(
    Catalog.p2p.map { ($0.exposedName, $0.type) }, uniquingKeysWith: { _, last in last })

/// A decoded sample with its series resolved to bytes: what a round trip must preserve.
struct DecodedSample: Equatable {
    var kind: SampleKind
    var name: [UInt8]
    /// name, value, name, value, … in wire order.
    var labels: [[UInt8]]
    /// For a key (distinct count), `.key(0..<0)`: the key's bytes are in `key`.
    var value: SampleValue
    var key: [UInt8]
}

func hex(_ bytes: some Sequence<UInt8>, limit: Int = 256) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for (i, b) in bytes.enumerated() {
        if i == limit { out += Array("…".utf8); break }
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// Walks the samples of a datagram `decoder` just accepted, checking the cursors against the
/// series table.
func walk(_ decoder: DatagramDecoder, _ raw: UnsafeRawBufferPointer) -> [DecodedSample] {
    var out: [DecodedSample] = []
    var cursor = decoder.samples(in: raw)
    while let sample = cursor.next() {
        check(sample.series >= 0 && sample.series < decoder.series.count, "series_index_in_range",
              "sample \(out.count) references series \(sample.series) of \(decoder.series.count)")
        guard sample.series >= 0 && sample.series < decoder.series.count else { break }
        check(DatagramDecoderRules.valueAllowed(sample.value, for: sample.kind), "sample_value_rules",
              "sample \(out.count): \(sample.kind) \(sample.value) passed validation")
        let def = decoder.series[sample.series]
        check(def.nameRange.lowerBound >= 0 && def.nameRange.upperBound <= raw.count, "name_range",
              "name range \(def.nameRange) of \(raw.count) bytes")
        let name = Array(raw[def.nameRange])
        check(name.withUnsafeBytes { Names.validateMetricName($0) } == nil, "metric_name_valid",
              "accepted metric name \(hex(name))")
        var labels: [[UInt8]] = []
        var lc = decoder.labels(of: def, in: raw)
        while let (n, v) = lc.next() {
            let labelName = Array(raw[n])
            let labelValue = Array(raw[v])
            check(labelName.withUnsafeBytes { Names.validateLabelName($0) } == nil, "label_name_valid",
                  "accepted label name \(hex(labelName))")
            check(labelValue.withUnsafeBytes { Names.isValidUTF8($0) }, "label_value_utf8",
                  "accepted label value \(hex(labelValue))")
            check(sample.kind != .histogramObserve || labelName != Array("le".utf8), "histogram_le",
                  "histogram sample on a series with an le label")
            check(sample.kind != .topKAdd || labelName != Array("key".utf8), "topk_key_label",
                  "top-K sample on a series with a key label")
            labels.append(labelName)
            labels.append(labelValue)
        }
        check(labels.count == 2 * def.labelCount, "label_cursor_count",
              "label cursor gave \(labels.count / 2) labels, series record says \(def.labelCount)")
        var value = sample.value
        var key: [UInt8] = []
        if case .key(let range) = sample.value {
            let limit = sample.kind == .topKAdd ? WireFormat.maxTopKKeyLength : WireFormat.maxKeyLength
            check(range.lowerBound >= 0 && range.upperBound <= raw.count && range.count <= limit,
                  "key_range", "key range \(range) of \(raw.count) bytes")
            key = Array(raw[range])
            value = .key(0..<0)
        }
        out.append(DecodedSample(kind: sample.kind, name: name, labels: labels, value: value, key: key))
    }
    check(out.count == decoder.sampleCount, "sample_count",
          "cursor walked \(out.count) samples, validate counted \(decoder.sampleCount)")
    return out
}

/// PROTOCOL.md §1.3, restated independently of the decoder.
enum DatagramDecoderRules {
    static func valueAllowed(_ value: SampleValue, for kind: SampleKind) -> Bool {
        if kind.takesKey || value.isKey { return kind.takesKey && value.isKey }
        switch (kind, value) {
        case (.gaugeSet, _): return true
        case (.counterAdd, .signed(let s)): return s >= 0
        case (.counterAdd, .double(let d)): return d.isFinite && !(d < 0)
        case (_, .double(let d)): return d.isFinite
        default: return true
        }
    }
}

extension SampleValue {
    var isKey: Bool {
        if case .key = self { return true }
        return false
    }
}

/// Re-encodes decoded samples with the Swift encoder and decodes the result again.
func roundTrip(_ samples: [DecodedSample], dropped: UInt128, canonicalValues: Bool) {
    var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
    if dropped > 0 { encoder.appendDropped(dropped) }
    var expected: [DecodedSample] = []
    expected.reserveCapacity(samples.count)
    for sample in samples {
        let name = String(decoding: sample.name, as: UTF8.self)
        var labels: [(String, String)] = []
        var k = 0
        while k + 1 < sample.labels.count {
            labels.append((String(decoding: sample.labels[k], as: UTF8.self),
                           String(decoding: sample.labels[k + 1], as: UTF8.self)))
            k += 2
        }
        var value = sample.value
        if canonicalValues && !sample.kind.takesKey {
            let d = sample.value.doubleValue
            value = SampleValue(canonical: d)
            // Normalized per PROTOCOL.md §3: only −0.0 changes (to +0.0); every other double,
            // NaN payloads included, keeps its bit pattern.
            let want = d == 0 ? 0 : d.bitPattern
            check(value.doubleValue.bitPattern == want, "canonical_value_bits",
                  "canonical(\(d)) = \(value) reads back as \(value.doubleValue)")
        }
        do {
            let fitted: Bool
            switch sample.kind {
            case .distinctAdd: fitted = try encoder.appendDistinct(name: name, labels: labels, key: sample.key)
            case .topKAdd:
                fitted = try encoder.appendTopK(name: name, labels: labels, key: String(decoding: sample.key, as: UTF8.self))
            default: fitted = try encoder.append(sample.kind, name: name, labels: labels, value: value)
            }
            check(fitted, "roundtrip_fits", "re-encoding a valid datagram overflowed 65536 bytes")
        } catch {
            check(false, "roundtrip_encoder_accepts",
                  "encoder refused a decoded sample (\(error.reason)): \(sample.kind) \(name) \(labels) \(value)")
        }
        var e = sample
        // The encoders write every NaN as the canonical quiet NaN (PROTOCOL.md §3).
        if case .double(let d) = value, d.isNaN { e.value = .double(.nan) } else { e.value = value }
        expected.append(e)
    }
    var decoder = DatagramDecoder()
    let encoded = encoder.bytes
    encoded.withUnsafeBytes { raw in
        if expected.isEmpty && dropped == 0 {
            check(decoder.validate(raw) == .empty, "roundtrip_empty", "empty re-encoding not refused as empty")
            return
        }
        let rejection = decoder.validate(raw)
        check(rejection == nil, "roundtrip_valid",
              "re-encoded datagram refused (\(String(describing: rejection))): \(hex(encoded))")
        guard rejection == nil else { return }
        check(decoder.droppedReported == dropped, "roundtrip_dropped",
              "dropped \(dropped) re-decoded as \(decoder.droppedReported)")
        let again = walk(decoder, raw)
        check(again == expected, "roundtrip_samples",
              "samples differ after re-encoding (canonical: \(canonicalValues)): \(hex(encoded))")
    }
}

/// Invariants of the store's own state.
func checkStoreState(_ store: MetricStore) {
    var total = 0
    var seen = Set<SeriesID>()
    for family in store.families where !(family.name.isEmpty && family.series.isEmpty) {  // not a released slot
        total += family.series.count
        check(family.series.count <= configuration.maxSeriesPerMetric, "metric_series_limit",
              "\(family.name) holds \(family.series.count) series")
        check(!family.name.isEmpty && !family.name.utf8.contains(0x2E) && !family.name.hasPrefix("p2pmetricsd_"),
              "family_name", "family named \(family.name)")
        if let type = catalogTypes[family.name] {
            check(type == family.type, "catalog_type", "\(family.name) is a \(family.type), catalog says \(type)")
        }
        for id in family.series {
            check(id >= 0 && Int(id) < store.seriesCount && seen.insert(id).inserted, "series_ids",
                  "series id \(id) of \(family.name) (store holds \(store.seriesCount))")
            var previous: [UInt8]? = nil
            store.forEachLabel(of: id) { name, value in
                let n = Array(name)
                check(Names.validateLabelName(name) == nil, "stored_label_name", "stored label name \(hex(n))")
                check(!value.isEmpty, "stored_label_value", "stored empty value for \(hex(n))")
                check(Names.isValidUTF8(value), "stored_label_utf8", "stored label value \(hex(value))")
                if let p = previous {
                    check(p.lexicographicallyPrecedes(n), "stored_labels_sorted",
                          "labels of series \(id) not strictly sorted: \(hex(p)) then \(hex(n))")
                }
                previous = n
            }
            switch family.type {
            case .counter:
                let (_, fraction) = store.counterValue(id)
                check(!fraction.isNaN && !(fraction < 0), "counter_nonnegative",
                      "counter \(family.name) series \(id) has fractional part \(fraction)")
            case .gauge:
                _ = store.gaugeValue(id)
            case .distinct:
                let estimate = store.distinctEstimate(id)
                check(estimate.isFinite && estimate >= 0, "distinct_estimate",
                      "distinct \(family.name) series \(id) estimates \(estimate)")
            case .topK:
                let (entries, total) = store.topKEntries(id)
                check(entries.count <= family.topK, "topk_size", "\(entries.count) entries, k = \(family.topK)")
                for e in entries {
                    check(!e.key.isEmpty && e.count >= 1 && e.error <= e.count && e.count <= total, "topk_entry",
                          "top-K entry \(hex(e.key)) count \(e.count) error \(e.error), total \(total)")
                }
            case .histogram:
                store.withHistogram(id) { buckets, _, count in
                    check(buckets.count == family.buckets.count + 1, "histogram_buckets",
                          "\(buckets.count) buckets for \(family.buckets.count) bounds")
                    var sum: UInt64 = 0
                    for b in buckets { sum &+= b }
                    check(sum == count, "histogram_count", "bucket counts sum to \(sum), _count is \(count)")
                }
            }
        }
    }
    check(total == store.seriesCount, "series_in_families",
          "families hold \(total) series, store counts \(store.seriesCount)")
    check(store.seriesCount <= configuration.maxSeries, "series_limit", "store holds \(store.seriesCount) series")
}

struct IngestDelta: Equatable {
    var result: DatagramRejection?
    var newSeries: Int
    var applied: UInt64
    var samplesRejected: [UInt64]
}

/// Non-empty lines of a text datagram (LF-separated, one trailing CR stripped).
func textLineCount(_ raw: UnsafeRawBufferPointer) -> Int {
    var count = 0
    for line in raw.split(separator: 0x0A, omittingEmptySubsequences: false) {
        var n = line.count
        if n > 0 && line.last == 0x0D { n -= 1 }
        if n > 0 { count += 1 }
    }
    return count
}

/// One `ingest`, with the statistics invariants of PROTOCOL.md §2. A datagram whose first byte is
/// ASCII is text StatsD: transcoded line by line, never refused whole.
func ingest(_ store: inout MetricStore, through input: inout DatagramInput, _ raw: UnsafeRawBufferPointer,
            expected: DatagramRejection?, sampleCount: Int, dropped: UInt128) -> IngestDelta {
    let isText = raw.first.map { $0 < 0x80 } ?? false
    let before = store.statistics
    let inputBefore = input.statistics
    let textBefore = input.text.statistics
    let seriesBefore = store.seriesCount
    let familiesBefore = store.families.count
    let result = input.ingest(raw, into: &store)
    let after = store.statistics
    let inputAfter = input.statistics
    let textAfter = input.text.statistics
    check(result == (isText ? nil : expected), "store_agrees_with_decoder",
          "store: \(String(describing: result)), decoder: \(String(describing: expected))")
    check(inputAfter.datagramsReceived == inputBefore.datagramsReceived &+ 1, "datagrams_received",
          "datagramsReceived \(inputBefore.datagramsReceived) → \(inputAfter.datagramsReceived)")
    check(inputAfter.bytesReceived == inputBefore.bytesReceived &+ UInt64(raw.count), "bytes_received",
          "bytesReceived \(inputBefore.bytesReceived) → \(inputAfter.bytesReceived) for \(raw.count) bytes")
    let applied = after.samplesApplied &- before.samplesApplied
    let newSeries = store.seriesCount - seriesBefore
    let rejectedDelta = zip(after.samplesRejected, before.samplesRejected).map { $0 &- $1 }
    check(newSeries >= 0 && store.families.count >= familiesBefore, "series_never_removed",
          "series \(seriesBefore) → \(store.seriesCount), families \(familiesBefore) → \(store.families.count)")
    if let reason = result {
        check(newSeries == 0 && store.families.count == familiesBefore, "rejected_creates_nothing",
              "rejected (\(reason)) datagram created \(newSeries) series")
        check(applied == 0, "rejected_applies_nothing", "rejected (\(reason)) datagram applied \(applied) samples")
        check(rejectedDelta.allSatisfy { $0 == 0 }, "rejected_no_sample_rejections",
              "rejected datagram counted sample rejections \(rejectedDelta)")
        check(after.clientDroppedDatagrams == before.clientDroppedDatagrams, "rejected_no_drops",
              "rejected datagram added client drops")
        let index = DatagramRejection.allCases.firstIndex(of: reason)!
        for (i, (a, b)) in zip(inputAfter.rejected.counts, inputBefore.rejected.counts).enumerated() {
            check(a == b &+ (i == index ? 1 : 0), "rejection_counted_once",
                  "datagramsRejected[\(DatagramRejection.allCases[i])] \(b) → \(a) for \(reason)")
        }
    } else if isText {
        // The transcoder only emits valid binary datagrams.
        check(inputAfter.rejected.counts == inputBefore.rejected.counts, "text_transcodes_valid",
              "text datagram produced a refused binary datagram: \(inputAfter.rejected.counts)")
        let lines = textLineCount(raw)
        check(textAfter.linesReceived == textBefore.linesReceived &+ UInt64(lines), "text_lines_counted",
              "\(lines) non-empty lines, linesReceived \(textBefore.linesReceived) → \(textAfter.linesReceived)")
        let refusedLines = zip(textAfter.rejected.counts, textBefore.rejected.counts).map { $0 &- $1 }.reduce(0, &+)
        check(refusedLines <= UInt64(lines), "text_lines_refused", "\(refusedLines) of \(lines) lines refused")
        check(after.clientDroppedDatagrams == before.clientDroppedDatagrams, "text_no_drops",
              "text datagram added client drops")
        check(UInt64(newSeries) <= applied, "phantom_series",
              "\(newSeries) series created but only \(applied) samples applied")
    } else {
        check(inputAfter.rejected.counts == inputBefore.rejected.counts, "accepted_not_rejected",
              "accepted datagram counted as rejected")
        check(textAfter.linesReceived == textBefore.linesReceived, "binary_not_text", "binary datagram counted text lines")
        let refused = rejectedDelta.reduce(0, &+)
        check(applied &+ refused == UInt64(sampleCount), "samples_accounted",
              "\(sampleCount) samples: \(applied) applied + \(refused) refused")
        check(after.clientDroppedDatagrams == before.clientDroppedDatagrams &+ dropped, "client_drops",
              "client drops \(before.clientDroppedDatagrams) → \(after.clientDroppedDatagrams), reported \(dropped)")
        // A series exists only because a sample was applied to it (PROTOCOL.md §1.2, §2: a refused
        // sample leaves the store untouched).
        check(UInt64(newSeries) <= applied, "phantom_series",
              "\(newSeries) series created but only \(applied) samples applied")
        check(store.families.count - familiesBefore <= newSeries, "phantom_family",
              "\(store.families.count - familiesBefore) families created with \(newSeries) series")
    }
    return IngestDelta(result: result, newSeries: newSeries, applied: applied, samplesRejected: rejectedDelta)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecoder(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)

    var decoder = DatagramDecoder()
    let rejection = decoder.validate(raw)
    // Validation is a pure function of the bytes.
    var second = DatagramDecoder()
    check(second.validate(raw) == rejection, "validate_deterministic", "validate differs on a second decoder")
    var sampleCount = 0
    var dropped: UInt128 = 0
    if rejection == nil {
        check(raw.count >= 2 && raw[0] == WireFormat.magic && raw.count <= WireFormat.maxDatagramSize,
              "accepted_shape", "accepted \(raw.count) bytes starting \(hex(raw.prefix(1)))")
        check(decoder.series.count <= WireFormat.maxSeriesPerDatagram, "series_table",
              "\(decoder.series.count) series")
        sampleCount = decoder.sampleCount
        dropped = decoder.droppedReported
        let samples = walk(decoder, raw)
        roundTrip(samples, dropped: dropped, canonicalValues: false)
        roundTrip(samples, dropped: dropped, canonicalValues: true)
    }

    // Fresh store per input so that every finding reproduces from its input alone; the datagram
    // is ingested twice to exercise the wire cache and existing families.
    var store = MetricStore(configuration: configuration)
    var input = DatagramInput()
    let first = ingest(&store, through: &input, raw, expected: rejection, sampleCount: sampleCount, dropped: dropped)
    checkStoreState(store)
    let again = ingest(&store, through: &input, raw, expected: rejection, sampleCount: sampleCount, dropped: dropped)
    check(again.newSeries == 0, "reingest_creates_no_series",
          "ingesting the same datagram again created \(again.newSeries) series")
    check(again.applied == first.applied && again.samplesRejected == first.samplesRejected, "reingest_same_outcome",
          "same datagram: applied \(first.applied) then \(again.applied), refused \(first.samplesRejected) then \(again.samplesRejected)")
    checkStoreState(store)
    return 0
}
