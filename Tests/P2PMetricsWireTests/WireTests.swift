import P2PMetricsTestVectors
import Testing
@testable import P2PMetricsWire

@Suite("Wire protocol v1")
struct WireTests {
    let vectors: TestVectors

    init() throws {
        vectors = try TestVectors.load()
    }

    @Test("the vector file has valid and reject vectors")
    func vectorFileIsPopulated() {
        #expect(vectors.valid.count >= 19)
        #expect(vectors.accept.count >= 6)
        #expect(vectors.reject.count >= 180)
        #expect(Set(vectors.reject.map(\.reason)).count >= 16)
    }

    @Test("every valid and accept vector decodes to exactly its calls and drops")
    func decodesValidVectors() throws {
        var decoder = DatagramDecoder()
        let canonical = Set(vectors.valid.map(\.id))
        for vector in vectors.valid + vectors.accept {
            try vector.bytes.withUnsafeBytes { raw in
                let rejection = decoder.validate(raw)
                #expect(rejection == nil, "vector \(vector.id) rejected: \(String(describing: rejection))")
                guard rejection == nil else { return }
                #expect(decoder.droppedReported == UInt128(vector.drops), "vector \(vector.id)")
                #expect(decoder.sampleCount == vector.calls.count, "vector \(vector.id)")
                var cursor = decoder.samples(in: raw)
                var decoded: [TestVectors.Call] = []
                while let sample = cursor.next() {
                    let def = decoder.series[sample.series]
                    var labels: [(String, String)] = []
                    var lc = decoder.labels(of: def, in: raw)
                    while let (n, v) = lc.next() {
                        labels.append((String(decoding: raw[n], as: UTF8.self), String(decoding: raw[v], as: UTF8.self)))
                    }
                    var key: String?
                    if case .key(let range) = sample.value { key = String(decoding: raw[range], as: UTF8.self) }
                    decoded.append(.init(kind: sample.kind, name: String(decoding: raw[def.nameRange], as: UTF8.self),
                                         value: sample.value.doubleValue, labels: labels, key: key))
                    let call = vector.calls[decoded.count - 1]
                    if call.key == nil && canonical.contains(vector.id) {
                        #expect(sample.value == SampleValue(canonical: call.value), "vector \(vector.id): value form")
                    }
                }
                let expected = vector.calls.map { call -> TestVectors.Call in
                    var c = call
                    if call.key == nil { c.value = SampleValue(canonical: call.value).doubleValue }
                    return c
                }
                #expect(decoded == expected, "vector \(vector.id)")
                _ = try #require(decoded.count == vector.calls.count)
            }
        }
    }

    @Test("the Swift encoder emits every valid vector byte for byte")
    func encodesValidVectors() throws {
        for vector in vectors.valid {
            var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
            if vector.drops > 0 { encoder.appendDropped(vector.drops) }
            for call in vector.calls {
                let fitted: Bool
                switch call.kind {
                case .distinctAdd: fitted = try encoder.appendDistinct(name: call.name, labels: call.labels, key: Array(call.key!.utf8))
                case .topKAdd: fitted = try encoder.appendTopK(name: call.name, labels: call.labels, key: call.key!)
                default: fitted = try encoder.append(call.kind, name: call.name, labels: call.labels,
                                                     value: SampleValue(canonical: call.value))
                }
                #expect(fitted)
            }
            #expect(encoder.bytes == vector.bytes, "vector \(vector.id)")
        }
    }

    @Test("any NaN is encoded as the canonical quiet NaN 0x7FF8000000000000")
    func canonicalNaN() throws {
        var encoder = DatagramEncoder(maxSize: 100)
        let odd = Double(bitPattern: 0xFFF8_0000_0000_0001)
        try encoder.append(.gaugeSet, name: "g", value: .double(odd))
        #expect(Array(encoder.bytes.suffix(8)) == [0, 0, 0, 0, 0, 0, 0xF8, 0x7F])
    }

    @Test("every reject vector is refused with its reason")
    func rejectsInvalidVectors() {
        var decoder = DatagramDecoder()
        for vector in vectors.reject {
            let rejection = vector.bytes.withUnsafeBytes { decoder.validate($0) }
            #expect(rejection?.rawValue == vector.reason, "vector \(vector.id)")
        }
    }

    @Test("every prefix of every valid vector is either valid or refused, never misread")
    func prefixesNeverCrash() {
        var decoder = DatagramDecoder()
        for vector in vectors.valid {
            for length in 0..<vector.bytes.count {
                let prefix = Array(vector.bytes[0..<length])
                let rejection = prefix.withUnsafeBytes { decoder.validate($0) }
                if rejection == nil {
                    #expect(decoder.sampleCount <= vector.calls.count)
                }
            }
        }
    }

    @Test("oversized, text and unknown-version datagrams")
    func transportLevelRejections() {
        var decoder = DatagramDecoder()
        var big = [UInt8](repeating: 0, count: WireFormat.maxDatagramSize + 1)
        big[0] = WireFormat.magic
        #expect(big.withUnsafeBytes { decoder.validate($0) } == .oversized)
        #expect(Array("p2p.x:1|c".utf8).withUnsafeBytes { decoder.validate($0) } == .badMagic)
        #expect([UInt8]().withUnsafeBytes { decoder.validate($0) } == .empty)
        #expect([0xFF, 0x01].withUnsafeBytes { decoder.validate($0) } == .badMagic)
    }

    @Test("random bytes after the magic never crash the decoder")
    func randomBytes() {
        var generator = SystemRandomNumberGenerator()
        var decoder = DatagramDecoder()
        for _ in 0..<20_000 {
            let n = Int.random(in: 1...64, using: &generator)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &generator) }
            bytes[0] = WireFormat.magic
            bytes.withUnsafeBytes { raw in
                if decoder.validate(raw) == nil {
                    var cursor = decoder.samples(in: raw)
                    var count = 0
                    while cursor.next() != nil { count += 1 }
                    #expect(count == decoder.sampleCount)
                }
            }
        }
    }

    @Test("varints round-trip at every length and zigzag is symmetric")
    func varints() {
        for shift in 0..<64 {
            for value in [UInt64(1) << shift, (UInt64(1) << shift) &- 1, UInt64.max >> (63 - shift)] {
                var out: [UInt8] = []
                Varint.append(value, to: &out)
                #expect(out.count == Varint.encodedLength(value))
                let decoded = out.withUnsafeBytes { raw -> UInt64? in
                    var reader = ByteReader(raw)
                    if case .success(let v) = reader.readVarint() { return v }
                    return nil
                }
                #expect(decoded == value)
            }
        }
        for n: Int64 in [0, -1, 1, .min, .max, -123456789] {
            #expect(Varint.unzigzag(Varint.zigzag(n)) == n)
        }
    }

    @Test("encoder refuses what the daemon would refuse, at the caller")
    func encoderValidation() {
        var encoder = DatagramEncoder()
        #expect(throws: EncodingError(.negativeCounter)) { try encoder.append(.counterAdd, name: "c", value: .signed(-1)) }
        #expect(throws: EncodingError(.nonFinite)) { try encoder.append(.histogramObserve, name: "h", value: .double(.nan)) }
        #expect(throws: EncodingError(.badMetricName)) { try encoder.append(.counterAdd, name: "9x", value: .unsigned(1)) }
        #expect(throws: EncodingError(.reservedName)) { try encoder.append(.counterAdd, name: "p2pmetricsd.x", value: .unsigned(1)) }
        #expect(throws: EncodingError(.badLabelName)) {
            try encoder.append(.counterAdd, name: "c", labels: [("a-b", "1")], value: .unsigned(1))
        }
        #expect(throws: EncodingError(.duplicateLabel)) {
            try encoder.append(.counterAdd, name: "c", labels: [("a", "1"), ("a", "2")], value: .unsigned(1))
        }
        #expect(throws: EncodingError(.reservedLabel)) {
            try encoder.append(.histogramObserve, name: "h", labels: [("le", "1")], value: .unsigned(1))
        }
        #expect(encoder.isEmpty)
    }

    @Test("a full encoder refuses the sample and stays valid")
    func encoderCapacity() throws {
        var encoder = DatagramEncoder(maxSize: 64)
        var accepted = 0
        while try encoder.append(.counterAdd, name: "some.counter", value: .unsigned(1)) { accepted += 1 }
        #expect(encoder.bytes.count <= 64)
        var decoder = DatagramDecoder()
        #expect(encoder.bytes.withUnsafeBytes { decoder.validate($0) } == nil)
        #expect(decoder.sampleCount == accepted)
    }
}

@Suite("Encoder: samples appended to the previous series")
struct AppendToPreviousSeriesTests {
    @Test("the bytes equal a full append's; no previous series, another type or a full datagram: false, unchanged")
    func sameBytes() throws {
        let labels = [("peer", "node-1"), ("zone", "a")]
        var full = DatagramEncoder()
        var short = DatagramEncoder()
        for value in [1.0, 2.5, 7.0] { try full.append(.histogramObserve, name: "amp", labels: labels, value: .double(value)) }
        try short.append(.histogramObserve, name: "amp", labels: labels, value: .double(1.0))
        #expect(try short.appendToPreviousSeries(.histogramObserve, value: .double(2.5)))
        #expect(try short.appendToPreviousSeries(.histogramObserve, value: .double(7.0)))
        #expect(short.bytes == full.bytes)

        let before = short.bytes
        #expect(try !short.appendToPreviousSeries(.counterAdd, value: .unsigned(1)))  // another type
        #expect(short.bytes == before)
        short.reset()
        #expect(try !short.appendToPreviousSeries(.histogramObserve, value: .double(1)))  // nothing since reset
        #expect(short.isEmpty)

        var sets = DatagramEncoder()
        var setsShort = DatagramEncoder()
        for key in ["a", "bb", "ccc"] { try sets.appendDistinct(name: "u", labels: labels, key: Array(key.utf8)) }
        try setsShort.appendDistinct(name: "u", labels: labels, key: Array("a".utf8))
        #expect(try setsShort.appendDistinctToPreviousSeries(key: Array("bb".utf8)))
        #expect(try setsShort.appendDistinctToPreviousSeries(key: Array("ccc".utf8)))
        #expect(setsShort.bytes == sets.bytes)
        #expect(try !full.appendDistinctToPreviousSeries(key: [1]))  // the previous was a histogram's

        var tiny = DatagramEncoder(maxSize: 64)
        try tiny.append(.counterAdd, name: "c", labels: labels, value: .unsigned(1))
        var appended = 0
        while try tiny.appendToPreviousSeries(.counterAdd, value: .unsigned(1)) { appended += 1 }
        #expect(tiny.bytes.count <= 64 && appended > 0)
        #expect(throws: EncodingError.self) { try tiny.appendToPreviousSeries(.counterAdd, value: .double(.nan)) }
    }
}
