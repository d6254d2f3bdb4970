/// Who sent a datagram, as the kernel vouches for it (`SCM_CREDENTIALS`).
public struct SenderCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    /// The sender's supplementary groups, when the transport looked them up (the kernel does not
    /// pass them: they are read from `/proc/PID/status`, see `SupplementaryGroups`).
    public var supplementaryGroups: [UInt32] = []

    public init(pid: Int32, uid: UInt32, gid: UInt32, supplementaryGroups: [UInt32] = []) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.supplementaryGroups = supplementaryGroups
    }
}

extension StoreConfiguration {
    /// Whether the allow-list admits `sender`: its uid is in `allowedUIDs`, or its primary or one
    /// of its supplementary groups is in `allowedGIDs`.
    public func admits(_ sender: SenderCredentials) -> Bool {
        allowedUIDs.contains(sender.uid) || allowedGIDs.contains(sender.gid)
            || sender.supplementaryGroups.contains { allowedGIDs.contains($0) }
    }
}

/// The outstanding gauge adds of each sending process, so that a process that dies mid-transfer
/// can have its contribution withdrawn (`p2p.transfers.active` never stays stuck above zero).
///
/// A `gauge set` on a series makes its value absolute again and forgets the contributions to it.
/// Contributions that net to zero are dropped, so a process holds entries only while it has
/// something outstanding. Bounded: beyond `maxProcesses` processes or `maxEntries` entries, new
/// contributions are applied but not tracked (and counted).
struct ProcessGauges {
    let maxProcesses: Int
    let maxEntries: Int
    private(set) var byProcess: [Int32: [SeriesID: Double]] = [:]
    private var bySeries: [SeriesID: Set<Int32>] = [:]
    private(set) var entries = 0

    init(maxProcesses: Int, maxEntries: Int) {
        self.maxProcesses = maxProcesses
        self.maxEntries = maxEntries
    }

    enum AddResult { case tracked, trackedNewProcess, untracked }

    mutating func add(_ value: Double, to series: SeriesID, from pid: Int32) -> AddResult {
        let known = byProcess[pid] != nil
        if !known && byProcess.count >= maxProcesses { return .untracked }
        // Mutated in place (`default:`), never copied out and back: one hash lookup per add.
        if let current = byProcess[pid, default: [:]][series] {
            let sum = current + value
            if sum == 0 {
                byProcess[pid, default: [:]][series] = nil
                bySeries[series]?.remove(pid)
                if bySeries[series]?.isEmpty == true { bySeries[series] = nil }
                entries -= 1
            } else {
                byProcess[pid, default: [:]][series] = sum
            }
        } else {
            guard entries < maxEntries else { return .untracked }
            guard value != 0 else { return .tracked }  // nothing outstanding, nothing to watch
            byProcess[pid, default: [:]][series] = value
            bySeries[series, default: []].insert(pid)
            entries += 1
        }
        return known ? .tracked : .trackedNewProcess
    }

    /// Forgets every contribution to `series` (after a gauge set, or when the series expires).
    mutating func clear(series: SeriesID) {
        guard let pids = bySeries.removeValue(forKey: series) else { return }
        for pid in pids where byProcess[pid]?.removeValue(forKey: series) != nil { entries -= 1 }
    }

    /// Removes a process and returns what it still contributed, per series.
    mutating func withdraw(_ pid: Int32) -> [SeriesID: Double] {
        guard let contributions = byProcess.removeValue(forKey: pid) else { return [:] }
        for series in contributions.keys {
            bySeries[series]?.remove(pid)
            if bySeries[series]?.isEmpty == true { bySeries[series] = nil }
        }
        entries -= contributions.count
        return contributions
    }
}
