/// One series record of a datagram, as byte ranges into that datagram.
public struct SeriesDefinition: Sendable {
    /// The series' identity within the datagram: from the name's length prefix to the end of the
    /// last label value. Equal bytes mean the same name and label list in the same order.
    public var keyRange: Range<Int>
    /// The metric name as sent (dots not yet mapped).
    public var nameRange: Range<Int>
    /// Where the first label's name length prefix starts.
    public var labelsStart: Int
    public var labelCount: Int
    @usableFromInline var hasLELabel: Bool
    @usableFromInline var hasKeyLabel: Bool
    /// `SeriesKeyHash.hash` of the bytes of `keyRange`, with the decoder's seed.
    public var hash: UInt32
}

/// A fast keyed hash of a series record's bytes (wyhash-style multiply-mix over 8-byte words,
/// seeded per decoder at random), for caches in front of authoritative tables: it is an order of
/// magnitude cheaper than SipHash, and the caches that use it bound their probe chains, so keys
/// aimed at one chain cost bounded work even if the seed were guessed.
public enum SeriesKeyHash {
    /// Never 0 (the low bit is set), so tables can use 0 for empty slots.
    @inlinable
    public static func hash(_ key: UnsafeRawBufferPointer, seed: UInt64) -> UInt32 {
        let n = key.count
        var h = seed ^ (UInt64(truncatingIfNeeded: n) &* 0x9E37_79B9_7F4A_7C15)
        var i = 0
        if let base = key.baseAddress {
            while i + 8 <= n {
                h = mix(h ^ base.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                i += 8
            }
            var tail: UInt64 = 0
            if n >= 8 && i < n {
                // the last 8 bytes, shifted so that only the ones past the last word remain: the
                // same value as the byte loop below, in one load
                tail = base.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self) >> UInt64((8 - (n - i)) * 8)
            } else {
                var shift: UInt64 = 0
                while i < n {
                    tail |= UInt64(base.load(fromByteOffset: i, as: UInt8.self)) << shift
                    shift += 8
                    i += 1
                }
            }
            h = mix(h ^ tail ^ 0xE703_7ED1_A0B4_28DB)
        }
        return UInt32(truncatingIfNeeded: h ^ (h >> 32)) | 1
    }

    @inlinable @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        let product = x.multipliedFullWidth(by: 0xA076_1D64_78BD_642F)
        return product.high ^ product.low
    }
}

/// One sample of a validated datagram.
public struct Sample: Sendable, Equatable {
    public var kind: SampleKind
    /// Index into the datagram's series table.
    public var series: Int
    public var value: SampleValue

    @inlinable
    public init(kind: SampleKind, series: Int, value: SampleValue) {
        self.kind = kind
        self.series = series
        self.value = value
    }
}

/// One sample of the last validated datagram, packed for a fast apply loop: no enums, no
/// second parse.
public struct PackedSample: Sendable {
    /// `kind << 4 | form`, as on the wire.
    public var tag: UInt8
    /// Index into the datagram's series table.
    public var series: UInt16
    /// Form 0: the value. Form 1: the `Int64` bit pattern. Form 2: the `Double` bit pattern.
    /// Form 3: the key's offset in the datagram << 32 | its length.
    public var bits: UInt64

    @inlinable
    public init(tag: UInt8, series: UInt16, bits: UInt64) {
        self.tag = tag
        self.series = series
        self.bits = bits
    }

    /// The packed form of a valid sample of `kind` (what `validate` would have packed had it been
    /// encoded and decoded); a key is a range of the bytes the sample is applied with.
    @inlinable
    public init(_ kind: SampleKind, _ value: SampleValue, series: UInt16) {
        let form: ValueForm
        let bits: UInt64
        switch value {
        case .unsigned(let u): form = .unsigned; bits = u
        case .signed(let s): form = .signed; bits = UInt64(bitPattern: s)
        case .double(let d): form = .float64; bits = d.isNaN ? Double.nan.bitPattern : d.bitPattern
        case .key(let range): form = .bytes; bits = UInt64(range.lowerBound) << 32 | UInt64(range.count)
        }
        self.init(tag: kind.rawValue << 4 | form.rawValue, series: series, bits: bits)
    }

    @inlinable
    public var keyRange: Range<Int> {
        let start = Int(bits >> 32)
        return start..<start + Int(bits & 0xFFFF_FFFF)
    }
}

/// Validates datagrams whole and then walks their samples.
///
/// `validate` checks every rule of PROTOCOL.md §1 and builds the datagram's series table; only if
/// it returns `nil` may `samples(in:)` be used on the same bytes. The series table is kept between
/// calls, so a long-lived decoder allocates nothing per datagram once warm.
public struct DatagramDecoder: Sendable {
    /// The series table of the last validated datagram.
    public private(set) var series: [SeriesDefinition] = []
    /// Sum of the `dropped` records of the last validated datagram (exact: a datagram may carry
    /// several records of up to 2^64 − 1 each).
    public private(set) var droppedReported: UInt128 = 0
    /// Sample slots, reused; the first `sampleStorageCount` belong to the last validated datagram.
    private var sampleStorage: [PackedSample] = []
    private var sampleStorageCount = 0

    /// The samples of the last validated datagram, in order.
    public var packed: ArraySlice<PackedSample> { sampleStorage[..<sampleStorageCount] }
    /// Number of samples in the last validated datagram.
    public var sampleCount: Int { sampleStorageCount }

    /// The seed of `SeriesKeyHash` for this decoder (random).
    public let hashSeed = UInt64.random(in: .min ... .max)

    public init() {
        series.reserveCapacity(64)
    }

    /// Checks the whole datagram; returns the first reason it must be refused, or `nil`.
    public mutating func validate(_ bytes: UnsafeRawBufferPointer) -> DatagramRejection? {
        validate(bytes, isKnown: { _, _ in false })
    }

    /// As `validate(_:)`, with a shortcut: `isKnown(keyBytes, hash)` is asked for every series
    /// record once its structure is read, and a record it vouches for (the caller validated those
    /// exact bytes before) skips the character-level checks of its names and values.
    public mutating func validate(
        _ bytes: UnsafeRawBufferPointer, isKnown: (UnsafeRawBufferPointer, UInt32) -> Bool
    ) -> DatagramRejection? {
        series.removeAll(keepingCapacity: true)
        droppedReported = 0
        sampleStorageCount = 0
        guard let first = bytes.first else { return .empty }
        guard bytes.count <= WireFormat.maxDatagramSize else { return .oversized }
        guard first == WireFormat.magic else { return .badMagic }  // text is told apart before decoding
        guard bytes.count > 1 else { return .empty }

        // Every sample takes at least three bytes, so this bounds the samples of the datagram and
        // the loop below can write them through a pointer, without growth or uniqueness checks.
        let bound = bytes.count / 3 + 1
        if sampleStorage.count < bound {
            sampleStorage = [PackedSample](repeating: PackedSample(tag: 0, series: 0, bits: 0), count: bound)
        }
        var storage: [PackedSample] = []
        swap(&storage, &sampleStorage)
        defer { swap(&storage, &sampleStorage) }
        return storage.withUnsafeMutableBufferPointer { out in
            var reader = ByteReader(bytes, offset: 1)
            var count = 0
            while reader.offset < bytes.count {
                let tag = bytes[reader.offset]
                reader.offset += 1
                if tag >= 0x10 {
                    switch readSample(tag: tag, &reader) {
                    case .success(let sample):
                        out[count] = sample
                        count += 1
                    case .failure(let reason):
                        return reason
                    }
                } else if tag == WireFormat.Tag.series {
                    if let reason = readSeries(&reader, isKnown: isKnown) { return reason }
                } else if tag == WireFormat.Tag.dropped {
                    switch reader.readVarint() {
                    case .failure(let reason): return reason
                    case .success(let n): droppedReported += UInt128(n)
                    }
                } else {
                    return .unknownRecord
                }
            }
            sampleStorageCount = count
            return nil
        }
    }

    /// Reads a series record in two passes: its structure (lengths, limits, which labels are
    /// `le` and `key`), then — unless `isKnown` vouches for the exact bytes — the characters of
    /// its names and values and the uniqueness of its label names.
    private mutating func readSeries(
        _ reader: inout ByteReader, isKnown: (UnsafeRawBufferPointer, UInt32) -> Bool
    ) -> DatagramRejection? {
        guard series.count < WireFormat.maxSeriesPerDatagram else { return .tooManySeries }
        let keyStart = reader.offset
        let name: Range<Int>
        switch reader.readString(maxLength: WireFormat.maxMetricNameLength) {
        case .failure(let reason): return reason
        case .success(let r): name = r
        }
        let count: UInt64
        switch reader.readVarint() {
        case .failure(let reason): return reason
        case .success(let n): count = n
        }
        guard count <= UInt64(WireFormat.maxLabelsPerSeries) else { return .tooManyLabels }
        let labelsStart = reader.offset
        var hasLE = false
        var hasKey = false
        for _ in 0..<Int(count) {
            switch reader.readString(maxLength: WireFormat.maxLabelNameLength) {
            case .failure(let reason): return reason
            case .success(let labelName):
                let b = reader.bytes
                if labelName.count == 2 && b[labelName.lowerBound] == 0x6C && b[labelName.lowerBound + 1] == 0x65 {
                    hasLE = true
                } else if labelName.count == 3 && b[labelName.lowerBound] == 0x6B && b[labelName.lowerBound + 1] == 0x65
                            && b[labelName.lowerBound + 2] == 0x79 {
                    hasKey = true
                }
            }
            if case .failure(let reason) = reader.readString(maxLength: WireFormat.maxLabelValueLength) { return reason }
        }
        let keyRange = keyStart..<reader.offset
        let key = UnsafeRawBufferPointer(rebasing: reader.bytes[keyRange])
        let hash = SeriesKeyHash.hash(key, seed: hashSeed)
        if !isKnown(key, hash) {
            if let reason = Self.checkCharacters(reader.bytes, name: name, labelsStart: labelsStart, count: Int(count)) {
                return reason
            }
        }
        series.append(SeriesDefinition(
            keyRange: keyRange, nameRange: name, labelsStart: labelsStart,
            labelCount: Int(count), hasLELabel: hasLE, hasKeyLabel: hasKey, hash: hash))
        return nil
    }

    /// The character-level rules of a structurally valid series record (PROTOCOL.md §1.4).
    private static func checkCharacters(
        _ bytes: UnsafeRawBufferPointer, name: Range<Int>, labelsStart: Int, count: Int
    ) -> DatagramRejection? {
        if let reason = Names.validateMetricName(UnsafeRawBufferPointer(rebasing: bytes[name])) { return reason }
        var labels = LabelCursor(bytes, offset: labelsStart, count: count)
        var index = 0
        while let (labelName, value) = labels.next() {
            if let reason = Names.validateLabelName(UnsafeRawBufferPointer(rebasing: bytes[labelName])) { return reason }
            guard Names.isValidUTF8(UnsafeRawBufferPointer(rebasing: bytes[value])) else { return .badUTF8 }
            // Duplicate check against the earlier names of this series (at most 15 of them).
            var earlier = LabelCursor(bytes, offset: labelsStart, count: index)
            while let previous = earlier.next() {
                if memEqual(bytes, previous.name, labelName) { return .duplicateLabel }
            }
            index += 1
        }
        return nil
    }

    /// Valid sample tags, one bit per `kind * 4 + form`: kinds 1–4 take forms 0–2 (`0b0111`),
    /// kinds 5 and 6 take form 3 (`0b1000`).
    @usableFromInline static let validTags: UInt32 = 0x0887_7770

    @inline(__always)
    private func readSample(tag: UInt8, _ reader: inout ByteReader) -> Result<PackedSample, DatagramRejection> {
        let kind = tag >> 4
        let form = tag & 0x0F
        guard form < 4, kind < 8, (Self.validTags >> (UInt32(kind) &* 4 &+ UInt32(form))) & 1 == 1 else {
            return .failure(.unknownRecord)
        }
        let index: UInt64
        switch reader.readVarint() {
        case .failure(let reason): return .failure(reason)
        case .success(let n): index = n
        }
        guard index < UInt64(series.count) else { return .failure(.badSeriesRef) }
        if kind == SampleKind.histogramObserve.rawValue && series[Int(index)].hasLELabel { return .failure(.reservedLabel) }
        if kind == SampleKind.topKAdd.rawValue && series[Int(index)].hasKeyLabel { return .failure(.reservedLabel) }
        let bits: UInt64
        switch form {
        case ValueForm.unsigned.rawValue:
            switch reader.readVarint() {
            case .failure(let reason): return .failure(reason)
            case .success(let u): bits = u
            }
        case ValueForm.signed.rawValue:
            switch reader.readVarint() {
            case .failure(let reason): return .failure(reason)
            case .success(let u):
                let n = Varint.unzigzag(u)
                if n < 0 && kind == SampleKind.counterAdd.rawValue { return .failure(.negativeCounter) }
                bits = UInt64(bitPattern: n)
            }
        case ValueForm.float64.rawValue:
            guard let d = reader.readFloat64() else { return .failure(.truncated) }
            if kind != SampleKind.gaugeSet.rawValue {
                guard d.isFinite else { return .failure(.nonFinite) }
                if d < 0 && kind == SampleKind.counterAdd.rawValue { return .failure(.negativeCounter) }
            }
            bits = d.bitPattern
        default:
            let limit = kind == SampleKind.topKAdd.rawValue ? WireFormat.maxTopKKeyLength : WireFormat.maxKeyLength
            switch reader.readString(maxLength: limit) {
            case .failure(let reason): return .failure(reason)
            case .success(let range):
                if kind == SampleKind.topKAdd.rawValue {
                    let key = UnsafeRawBufferPointer(rebasing: reader.bytes[range])
                    guard !key.isEmpty else { return .failure(.tooLong) }
                    guard Names.isValidUTF8(key) else { return .failure(.badUTF8) }
                }
                bits = UInt64(range.lowerBound) << 32 | UInt64(range.count)
            }
        }
        return .success(PackedSample(tag: tag, series: UInt16(truncatingIfNeeded: index), bits: bits))
    }

    /// The value rules of PROTOCOL.md §1.3.
    @usableFromInline
    static func check(_ value: SampleValue, for kind: SampleKind) -> DatagramRejection? {
        switch (kind, value) {
        case (_, .key), (.gaugeSet, _), (_, .unsigned):
            return nil
        case (.counterAdd, .signed(let s)):
            return s < 0 ? .negativeCounter : nil
        case (.counterAdd, .double(let d)):
            if !d.isFinite { return .nonFinite }
            return d < 0 ? .negativeCounter : nil
        case (_, .signed):
            return nil
        case (_, .double(let d)):
            return d.isFinite ? nil : .nonFinite
        }
    }

    /// The samples of the datagram last accepted by `validate`, in order, as `Sample` values
    /// (keys as ranges of `bytes`). The store reads `packed` directly; this is the friendlier view.
    public func samples(in bytes: UnsafeRawBufferPointer) -> SampleCursor {
        SampleCursor(packed)
    }

    /// The labels of a series of the datagram last accepted by `validate`.
    @inlinable
    public func labels(of definition: SeriesDefinition, in bytes: UnsafeRawBufferPointer) -> LabelCursor {
        LabelCursor(bytes, offset: definition.labelsStart, count: definition.labelCount)
    }
}

@usableFromInline
func memEqual(_ bytes: UnsafeRawBufferPointer, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
    guard a.count == b.count else { return false }
    for k in 0..<a.count where bytes[a.lowerBound + k] != bytes[b.lowerBound + k] { return false }
    return true
}

/// Walks the samples of an already validated datagram.
public struct SampleCursor {
    private let samples: ArraySlice<PackedSample>
    private var index: Int

    init(_ samples: ArraySlice<PackedSample>) {
        self.samples = samples
        index = samples.startIndex
    }

    public mutating func next() -> Sample? {
        guard index < samples.endIndex else { return nil }
        let packed = samples[index]
        index += 1
        let value: SampleValue
        switch packed.tag & 0x0F {
        case ValueForm.unsigned.rawValue: value = .unsigned(packed.bits)
        case ValueForm.signed.rawValue: value = .signed(Int64(bitPattern: packed.bits))
        case ValueForm.float64.rawValue: value = .double(Double(bitPattern: packed.bits))
        default: value = .key(packed.keyRange)
        }
        // The decoder admitted only valid kinds.
        return Sample(kind: SampleKind(rawValue: packed.tag >> 4) ?? .counterAdd, series: Int(packed.series), value: value)
    }
}

/// Walks the (name, value) byte ranges of one series record.
public struct LabelCursor {
    @usableFromInline var reader: ByteReader
    @usableFromInline var remaining: Int

    @inlinable
    init(_ bytes: UnsafeRawBufferPointer, offset: Int, count: Int) {
        reader = ByteReader(bytes, offset: offset)
        remaining = count
    }

    /// Walks every pair of `bytes`, a run of length-prefixed (name, value) pairs such as a
    /// store's canonical label key; stops at the end or at the first field that does not fit.
    @inlinable
    public init(pairsIn bytes: UnsafeRawBufferPointer) {
        self.init(bytes, offset: 0, count: .max)
    }

    @inlinable
    public mutating func next() -> (name: Range<Int>, value: Range<Int>)? {
        guard remaining > 0,
              case .success(let name) = reader.readString(maxLength: .max),
              case .success(let value) = reader.readString(maxLength: .max) else { return nil }
        remaining -= 1
        return (name, value)
    }
}
