/// Space-Saving top-K sketches (Metwally et al.), K slots per series, in flat arrays.
///
/// Each slot holds a key (up to 128 bytes), its count and its error: the count may overestimate
/// the key's true occurrences by at most the error, and any key that occurred more than N/K times
/// is guaranteed to be in the sketch. Memory is fixed per series (K × 145 bytes) whatever the
/// number of distinct keys.
struct TopKSketches {
    static let keyCapacity = 128

    private var keys: [UInt8] = []
    private var lengths: [UInt8] = []
    private var counts: [UInt64] = []
    private var errors: [UInt64] = []
    private var freeRuns: [Int: [UInt32]] = [:]

    /// One entry of a sketch, for exposition.
    struct Entry {
        var key: [UInt8]
        var count: UInt64
        var error: UInt64
    }

    var memoryFootprint: Int { keys.count + lengths.count + (counts.count + errors.count) * 8 }

    /// Bytes that allocating a sketch of `k` slots adds (0 when a released one is reused).
    func growthBytes(allocating k: Int) -> Int {
        freeRuns[k]?.isEmpty == false ? 0 : k * Self.bytesPerSlot
    }

    static let bytesPerSlot = keyCapacity + 1 + 8 + 8

    /// Reserves `k` empty slots; returns the first.
    mutating func allocate(_ k: Int) -> UInt32 {
        if let base = freeRuns[k]?.popLast() {
            for slot in Int(base)..<Int(base) + k {
                lengths[slot] = 0
                counts[slot] = 0
                errors[slot] = 0
            }
            return base
        }
        let base = UInt32(lengths.count)
        keys.append(contentsOf: repeatElement(0, count: k * Self.keyCapacity))
        lengths.append(contentsOf: repeatElement(0, count: k))
        counts.append(contentsOf: repeatElement(0, count: k))
        errors.append(contentsOf: repeatElement(0, count: k))
        return base
    }

    mutating func release(_ base: UInt32, _ k: Int) {
        freeRuns[k, default: []].append(base)
    }

    /// Counts one occurrence of `key` (1–128 bytes) in the sketch at `base`.
    mutating func add(_ key: UnsafeRawBufferPointer, base: UInt32, k: Int) {
        let first = Int(base)
        var empty = -1
        var minimum = -1
        for slot in first..<first + k {
            let length = Int(lengths[slot])
            if length == 0 {
                if empty < 0 { empty = slot }
                continue
            }
            if length == key.count {
                let same = keys.withUnsafeBytes {
                    memcmpEqual(UnsafeRawBufferPointer(rebasing: $0[slot * Self.keyCapacity..<slot * Self.keyCapacity + length]), key)
                }
                if same {
                    counts[slot] &+= 1
                    return
                }
            }
            if minimum < 0 || counts[slot] < counts[minimum] { minimum = slot }
        }
        let slot: Int
        if empty >= 0 {
            slot = empty
            counts[slot] = 1
            errors[slot] = 0
        } else {
            // Space-Saving: the new key takes the least counted slot and inherits its count as error.
            slot = minimum
            errors[slot] = counts[slot]
            counts[slot] &+= 1
        }
        lengths[slot] = UInt8(key.count)
        keys.withUnsafeMutableBytes { raw in
            UnsafeMutableRawBufferPointer(rebasing: raw[slot * Self.keyCapacity..<slot * Self.keyCapacity + key.count])
                .copyMemory(from: key)
        }
    }

    /// The sketch's keys, most counted first (ties by key bytes, for a stable exposition).
    func entries(base: UInt32, k: Int) -> [Entry] {
        var out: [Entry] = []
        for slot in Int(base)..<Int(base) + k where lengths[slot] > 0 {
            let start = slot * Self.keyCapacity
            out.append(Entry(key: Array(keys[start..<start + Int(lengths[slot])]), count: counts[slot], error: errors[slot]))
        }
        return out.sorted { $0.count != $1.count ? $0.count > $1.count : $0.key.lexicographicallyPrecedes($1.key) }
    }
}
