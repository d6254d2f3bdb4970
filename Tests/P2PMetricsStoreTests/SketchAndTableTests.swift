import Testing
@testable import P2PMetricsStore

@Suite("ByteKeyTable: byte-string keys in one arena")
struct ByteKeyTableTests {
    private func key(_ i: Int) -> [UInt8] { Array("key-\(i)".utf8) }

    private func find(_ table: ByteKeyTable, _ bytes: [UInt8]) -> Int32? {
        bytes.withUnsafeBytes { table.find($0, hash: ByteKeyTable.hash($0)) }
    }

    @discardableResult
    private func insert(_ table: inout ByteKeyTable, _ bytes: [UInt8], _ value: Int32) -> Int? {
        bytes.withUnsafeBytes { table.insert($0, hash: ByteKeyTable.hash($0), value: value) }
    }

    @Test("every key inserted is found with its value through many rehashes; absent keys are not")
    func insertFind() {
        var table = ByteKeyTable()
        for i in 0..<10_000 { insert(&table, key(i), Int32(i)) }
        #expect(table.count == 10_000)
        for i in 0..<10_000 { #expect(find(table, key(i)) == Int32(i)) }
        #expect(find(table, key(10_000)) == nil)
        #expect(find(table, Array("key-".utf8)) == nil)  // a prefix of every key
        #expect(find(table, []) == nil)
    }

    @Test("removed keys are gone, the others stay; compaction keeps live keys and reports new offsets")
    func removeCompact() {
        var table = ByteKeyTable()
        var offsets: [Int32: Int] = [:]
        for i in 0..<20_000 { offsets[Int32(i)] = insert(&table, key(i), Int32(i)) }
        for i in stride(from: 0, to: 20_000, by: 2) {
            #expect(key(i).withUnsafeBytes { table.remove($0, hash: ByteKeyTable.hash($0)) } == Int32(i))
        }
        #expect(key(0).withUnsafeBytes { table.remove($0, hash: ByteKeyTable.hash($0)) } == nil)  // twice
        #expect(table.count == 10_000)
        #expect(table.deadBytes > 0)
        let before = table.arena.count
        table.compact { value, offset in offsets[value] = offset }
        #expect(table.deadBytes == 0 && table.arena.count < before)
        for i in 0..<20_000 {
            #expect(find(table, key(i)) == (i % 2 == 0 ? nil : Int32(i)))
            if i % 2 == 1, let offset = offsets[Int32(i)] {
                #expect(table.withKey(offset: offset, length: key(i).count) { Array($0) } == key(i))
            }
        }
    }

    @Test("the arena bound refuses a key that does not fit and stores nothing")
    func arenaBound() {
        // Each key is stored after its 8-byte entry header (its length and value).
        var table = ByteKeyTable(maxArenaBytes: 26)
        #expect(insert(&table, Array("12345678".utf8), 1) == 8)
        #expect(!table.canStore(length: 3))
        #expect(insert(&table, Array("abc".utf8), 2) == nil)
        #expect(table.count == 1 && table.arena.count == 16)
        #expect(find(table, Array("abc".utf8)) == nil)
    }

    @Test("a bounded probe gives up instead of walking a long chain, and says when there is no room")
    func boundedProbe() {
        var table = ByteKeyTable(minimumCapacity: 1024, maxProbe: 4)
        let hash: UInt32 = 0x1235  // one chain for every key (low bit set, as stored hashes have)
        for i in 0..<8 { key(i).withUnsafeBytes { _ = table.insert($0, hash: hash, value: Int32(i)) } }
        #expect(key(0).withUnsafeBytes { table.find($0, hash: hash) } == 0)
        #expect(key(7).withUnsafeBytes { table.find($0, hash: hash) } == nil)  // past the probe bound
        #expect(!table.hasRoomNear(hash))
    }
}

@Suite("HyperLogLog: distinct counts in 4 KiB")
struct HyperLogLogTests {
    private func estimate(_ keys: some Sequence<String>) -> Double {
        var registers = [UInt8](repeating: 0, count: HyperLogLog.registerCount)
        registers.withUnsafeMutableBufferPointer { r in
            for key in keys { Array(key.utf8).withUnsafeBytes { HyperLogLog.add($0, to: r) } }
        }
        return registers.withUnsafeBufferPointer { HyperLogLog.estimate($0) }
    }

    /// Keys are hashed with the per-process seeded SipHash, so two keys may share a register:
    /// small sets read within a key or two (linear counting), never exactly by construction.
    @Test("empty is 0; repeats do not count; small sets read within the register collisions")
    func small() {
        #expect(estimate([String]()) == 0)
        #expect(estimate(Array(repeating: "x", count: 1_000)) == 1)
        #expect(abs(estimate((0..<20).map { "k\($0)" } + (0..<20).map { "k\($0)" }) - 20) <= 2)
        #expect(abs(estimate((0..<100).map { "k\($0)" }) - 100) <= 5)
    }

    /// The seed changes every run, so the bound is four standard errors: three failed about once
    /// in a few hundred runs (5.34 % seen at n = 10,000), a false failure is now about 1 in 16,000,
    /// and a broken sketch is still far outside it.
    @Test("large sets are within four standard errors (4 × 1.63 %)", arguments: [10_000, 100_000])
    func large(n: Int) {
        let error = abs(estimate((0..<n).lazy.map { "key-\($0)" }) - Double(n)) / Double(n)
        #expect(error < 4 * 1.04 / 64, "n=\(n): relative error \(error)")
    }
}
