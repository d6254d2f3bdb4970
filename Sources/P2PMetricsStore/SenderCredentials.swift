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
