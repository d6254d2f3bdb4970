import P2PMetricsWire

/// An open-addressing hash table from byte strings to 32-bit values.
///
/// Keys live back to back in one arena, so a million keys cost a million slots and one buffer,
/// not a million heap objects, and a lookup hashes and compares the caller's bytes in place
/// without allocating. Hashing uses the standard library's randomly seeded SipHash, so hostile
/// senders cannot aim collisions at it.
///
/// A slot is 8 bytes (hash and arena offset): each key's value and length sit in the arena just
/// before its bytes, read only on a hash match, when the key's bytes are read anyway. So a
/// lookup touches one slot line and the key's own lines, and the slots of a 5,200-key cache take
/// 128 KiB rather than 256 (issue 18: the text input cache's misses when the loop wakes often).
struct ByteKeyTable {
    private struct Slot {
        /// 0 marks an empty slot, 2 a removed one; stored hashes always have their low bit set.
        var hash: UInt32 = 0
        /// Where the key's bytes start in the arena; its `Entry` header is the 8 bytes before.
        var offset: UInt32 = 0
    }

    /// What the arena holds before each key's bytes.
    private enum Entry {
        static let size = 8
        static func length(_ arena: UnsafeRawBufferPointer, keyAt offset: Int) -> Int {
            Int(arena.loadUnaligned(fromByteOffset: offset - size, as: UInt32.self))
        }
        static func value(_ arena: UnsafeRawBufferPointer, keyAt offset: Int) -> Int32 {
            arena.loadUnaligned(fromByteOffset: offset - size + 4, as: Int32.self)
        }
    }

    private var slots: [Slot]
    private var mask: Int
    private(set) var count = 0
    private var tombstones = 0
    /// Bytes of the arena that belong to removed keys.
    private(set) var deadBytes = 0
    /// Every inserted key, in insertion order. Offsets into it are stable until `compact`.
    private(set) var arena: [UInt8] = []
    private static let tombstone: UInt32 = 2

    /// Lookups give up after this many slots. A cache sets it low, so that keys aimed at one
    /// probe chain cost a bounded amount of work; an authoritative table keeps it unbounded.
    let maxProbe: Int
    /// Bytes the arena may hold; slots store 32-bit offsets, so it never passes 4 GiB. Injectable
    /// so that the boundary can be tested without gigabytes.
    let maxArenaBytes: Int
    static let offsetLimit = Int(UInt32.max)

    init(minimumCapacity: Int = 16, maxProbe: Int = .max, maxArenaBytes: Int = ByteKeyTable.offsetLimit) {
        self.maxProbe = maxProbe
        self.maxArenaBytes = min(maxArenaBytes, Self.offsetLimit)
        var size = 16
        while size < minimumCapacity * 2 { size <<= 1 }
        slots = Array(repeating: Slot(), count: size)
        mask = size - 1
    }

    static func hash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        return UInt32(truncatingIfNeeded: hasher.finalize()) | 1
    }

    /// Bytes in use: slots plus the arena's bytes (for the series memory self-metric and budget).
    var memoryFootprint: Int { slots.count * MemoryLayout<Slot>.stride + arena.count }

    /// Bytes `memoryFootprint` grows by when a key of `keyLength` bytes is inserted: the key, its
    /// entry header, and the slots' growth when that insert rehashes.
    func bytesOfInsert(keyLength: Int) -> Int {
        let entry = keyLength + Entry.size
        guard (count + tombstones + 1) * 2 > slots.count, (count + 1) * 4 > slots.count else { return entry }
        return entry + slots.count * MemoryLayout<Slot>.stride
    }

    func find(_ key: UnsafeRawBufferPointer, hash: UInt32) -> Int32? {
        guard let index = slotIndex(of: key, hash: hash) else { return nil }
        return arena.withUnsafeBytes { Entry.value($0, keyAt: Int(slots[index].offset)) }
    }

    /// The slot holding `key`, looked for along its probe chain (at most `maxProbe` slots).
    @inline(__always)
    private func slotIndex(of key: UnsafeRawBufferPointer, hash: UInt32) -> Int? {
        slots.withUnsafeBufferPointer { slots in
            arena.withUnsafeBytes { arena in
                var i = Self.home(hash, mask)
                var probes = 0
                while probes < maxProbe {
                    probes += 1
                    let slot = slots[i]
                    if slot.hash == 0 { return nil }
                    if slot.hash == hash, Entry.length(arena, keyAt: Int(slot.offset)) == key.count {
                        let stored = UnsafeRawBufferPointer(rebasing: arena[Int(slot.offset)..<Int(slot.offset) + key.count])
                        if key.count == 0 || memcmpEqual(stored, key) { return i }
                    }
                    i = (i + 1) & mask
                }
                return nil
            }
        }
    }

    /// The slot a hash starts its probe at. Not its low bits: stored hashes always have the lowest
    /// bit set, so every key would start on an odd slot and the chains would be twice as long.
    @inline(__always)
    private static func home(_ hash: UInt32, _ mask: Int) -> Int { Int(hash >> 1) & mask }

    /// Whether a key with this hash would be stored within `maxProbe` slots of its home.
    func hasRoomNear(_ hash: UInt32) -> Bool {
        var i = Self.home(hash, mask)
        for _ in 0..<min(maxProbe, slots.count) {
            if slots[i].hash & 1 == 0 { return true }  // empty or removed
            i = (i + 1) & mask
        }
        return false
    }

    /// Whether a key of `length` bytes (and its entry header) still fits in the arena (its offsets
    /// stay representable).
    func canStore(length: Int) -> Bool { length + Entry.size <= maxArenaBytes - arena.count }

    /// Inserts a key known to be absent; returns the arena offset its bytes were stored at, or nil
    /// (storing nothing) when the arena cannot take the key (see `canStore`).
    @discardableResult
    mutating func insert(_ key: UnsafeRawBufferPointer, hash: UInt32, value: Int32) -> Int? {
        guard canStore(length: key.count) else { return nil }
        if (count + tombstones + 1) * 2 > slots.count { rehash(size: (count + 1) * 4 > slots.count ? slots.count * 2 : slots.count) }
        withUnsafeBytes(of: UInt32(key.count)) { arena.append(contentsOf: $0) }
        withUnsafeBytes(of: value) { arena.append(contentsOf: $0) }
        let offset = arena.count
        arena.append(contentsOf: key)
        place(Slot(hash: hash, offset: UInt32(offset)))
        count += 1
        return offset
    }

    /// The stored bytes of a key inserted at `offset`.
    func withKey<R>(offset: Int, length: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        arena.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[offset..<offset + length])) }
    }

    mutating func removeAll() {
        for i in slots.indices { slots[i] = Slot() }
        arena.removeAll(keepingCapacity: true)
        count = 0
        tombstones = 0
        deadBytes = 0
    }

    /// Removes a key; returns its value, or nil when it was absent. Its arena bytes stay until
    /// `compact`.
    @discardableResult
    mutating func remove(_ key: UnsafeRawBufferPointer, hash: UInt32) -> Int32? {
        let index = slotIndex(of: key, hash: hash)
        guard let index else { return nil }
        let (length, value) = arena.withUnsafeBytes { arena in
            let offset = Int(slots[index].offset)
            return (Entry.length(arena, keyAt: offset), Entry.value(arena, keyAt: offset))
        }
        deadBytes += length + Entry.size
        slots[index].hash = Self.tombstone
        count -= 1
        tombstones += 1
        return value
    }

    /// True when removed keys hold more than half the arena (and more than a little memory).
    var shouldCompact: Bool { deadBytes > 64 * 1024 && deadBytes * 2 > arena.count }

    /// Rewrites the arena with the live keys only; `relocated(value, newOffset)` is called for
    /// each, so holders of offsets can follow.
    mutating func compact(_ relocated: (Int32, Int) -> Void) {
        var fresh: [UInt8] = []  // live keys only: every offset stays below the old arena's size
        fresh.reserveCapacity(arena.count - deadBytes)
        for i in slots.indices where slots[i].hash & 1 == 1 {
            let start = Int(slots[i].offset)
            let (length, value) = arena.withUnsafeBytes { (Entry.length($0, keyAt: start), Entry.value($0, keyAt: start)) }
            fresh.append(contentsOf: arena[start - Entry.size..<start + length])
            let newOffset = fresh.count - length
            slots[i].offset = UInt32(newOffset)
            relocated(value, newOffset)
        }
        arena = fresh
        deadBytes = 0
    }

    private mutating func place(_ slot: Slot) {
        var i = Self.home(slot.hash, mask)
        while slots[i].hash != 0 { i = (i + 1) & mask }
        slots[i] = slot
    }

    private mutating func rehash(size: Int) {
        let old = slots
        slots = Array(repeating: Slot(), count: size)
        mask = size - 1
        tombstones = 0
        for slot in old where slot.hash & 1 == 1 { place(slot) }
    }
}

@inline(__always)
func memcmpEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    guard let pa = a.baseAddress, let pb = b.baseAddress else { return a.count == 0 }
    var i = 0
    let n = a.count
    while i + 8 <= n {
        if pa.loadUnaligned(fromByteOffset: i, as: UInt64.self) != pb.loadUnaligned(fromByteOffset: i, as: UInt64.self) {
            return false
        }
        i += 8
    }
    if n >= 8 && i < n {  // the rest, as the (overlapping) last 8 bytes
        return pa.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self) == pb.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self)
    }
    while i < n {
        if pa.load(fromByteOffset: i, as: UInt8.self) != pb.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}
