import Glibc
import Testing

import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsServer

@Suite("State file: counters across restarts")
struct StateFileTests {
    private func temporaryDirectory() throws -> String {
        var template = Array("/tmp/p2pm-state-unit-XXXXXX".utf8CString)
        return String(cString: try #require(mkdtemp(&template)))
    }

    private func counters(_ values: [(String, UInt64)]) -> MetricStore {
        var store = MetricStore()
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        for (name, value) in values { _ = try? encoder.append(.counterAdd, name: name, value: .unsigned(value)) }
        _ = encoder.bytes.withUnsafeBytes { store.apply($0) }
        return store
    }

    @Test("saved then loaded: the same totals, the file consumed, statistics not counted again")
    func roundTrip() throws {
        let directory = try temporaryDirectory()
        defer { rmdir(directory) }
        let path = "\(directory)/counters.state"
        let saved = counters([("a", 5), ("b", UInt64.max)])
        #expect(StateFile.save(saved.counterSnapshot(), to: path) == nil)
        var restored = MetricStore()
        guard case .restored(let samples, let refused) = try StateFile.load(from: path, into: &restored) else {
            Issue.record("not restored")
            return
        }
        #expect(samples == 2 && refused.isEmpty)
        #expect(access(path, F_OK) != 0)  // consumed
        for family in restored.families {
            let id = try #require(family.series.first)
            #expect(restored.counterValue(id).integer == (family.name == "a" ? 5 : UInt128(UInt64.max)))
        }
        #expect(restored.statistics == StoreStatistics())
    }

    @Test("a damaged file is set aside as .corrupt and nothing is applied; an absent one is absent")
    func damaged() throws {
        let directory = try temporaryDirectory()
        let path = "\(directory)/counters.state"
        defer {
            unlink("\(path).corrupt")
            rmdir(directory)
        }
        var store = MetricStore()
        #expect(try { if case .absent = try StateFile.load(from: path, into: &store) { return true }; return false }())
        #expect(StateFile.save(counters([("a", 5)]).counterSnapshot(), to: path) == nil)
        let fd = open(path, O_WRONLY)
        #expect(pwrite(fd, "X", 1, 30) == 1)  // one byte of the payload: the CRC no longer matches
        close(fd)
        guard case .refused(let reason) = try StateFile.load(from: path, into: &store) else {
            Issue.record("a damaged file was accepted")
            return
        }
        #expect(reason == "damaged (set aside as \(path).corrupt)")
        #expect(store.seriesCount == 0)
        #expect(access("\(path).corrupt", F_OK) == 0)
    }

    @Test("parse refuses a wrong magic, length or checksum, and a record running past the end")
    func parse() {
        let good = [UInt8]("P2PMSNP1".utf8) + [0, 0, 0, 0, 0, 0, 0, 0] + Self.le32(StateFile.checksum([]))
        #expect(StateFile.parse(good) == [])
        #expect(StateFile.parse(Array("P2PMSNP2".utf8) + good.dropFirst(8)) == nil)
        #expect(StateFile.parse(good + [0]) == nil)  // length
        let record: [UInt8] = [9, 0, 0, 0, 1]  // says 9 bytes, holds 1
        let long = [UInt8]("P2PMSNP1".utf8) + [5, 0, 0, 0, 0, 0, 0, 0] + Self.le32(StateFile.checksum(record)) + record
        #expect(StateFile.parse(long) == nil)
    }

    private static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
}
