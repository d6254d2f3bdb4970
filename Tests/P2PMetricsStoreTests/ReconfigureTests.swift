import Testing
import P2PMetricsWire

@testable import P2PMetricsStore

@Suite("Supplementary groups")
struct ReconfigureTests {
    let member = SenderCredentials(pid: 400, uid: 4000, gid: 4000, supplementaryGroups: [5000, 998])

    @Test("supplementary groups admit a sender whose uid and primary gid are not listed")
    func supplementaryGroups() {
        var configuration = StoreConfiguration()
        configuration.allowedGIDs = [998]
        #expect(configuration.admits(member))
        #expect(!configuration.admits(SenderCredentials(pid: 400, uid: 4000, gid: 4000)))
        #expect(!configuration.admits(SenderCredentials(pid: 400, uid: 4000, gid: 4000, supplementaryGroups: [5000])))
    }
}
