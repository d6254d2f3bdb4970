import Glibc
import Testing

import P2PMetricsStore
@testable import P2PMetricsServer

@Suite("Process edge: addresses, regular files, supplementary groups, signal names")
struct EdgeTests {
    private func resolved(_ text: String) throws -> (family: Int32, port: UInt16, host: String) {
        let address = try NetworkAddress(parsing: text)
        return address.withSocketAddress { pointer, _ in
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            if Int32(pointer.pointee.sa_family) == AF_INET {
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                    var a = v4.pointee.sin_addr
                    inet_ntop(AF_INET, &a, &buffer, socklen_t(buffer.count))
                    return (AF_INET, UInt16(bigEndian: v4.pointee.sin_port), String(cString: buffer))
                }
            }
            return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                var a = v6.pointee.sin6_addr
                inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count))
                return (AF_INET6, UInt16(bigEndian: v6.pointee.sin6_port), String(cString: buffer))
            }
        }
    }

    @Test("HOST:PORT with a name or IPv4, [IPV6]:PORT and :PORT resolve once, keeping the text")
    func addressForms() throws {
        #expect(try resolved("127.0.0.1:9478") == (AF_INET, 9478, "127.0.0.1"))
        #expect(try resolved("localhost:80") == (AF_INET, 80, "127.0.0.1"))  // a name: its first IPv4 address
        #expect(try resolved("[::1]:9478") == (AF_INET6, 9478, "::1"))
        let any = try resolved(":9478")
        #expect(any.port == 9478 && (any.host == "::" || any.host == "0.0.0.0"))
        #expect(try NetworkAddress(parsing: "localhost:1").description == "localhost:1")
    }

    @Test("a bad address is refused with the reason a user can act on")
    func addressErrors() {
        let cases: [(String, String)] = [
            ("localhost", "expected HOST:PORT, [IPV6]:PORT or :PORT"),
            ("[::1:80", "expected HOST:PORT, [IPV6]:PORT or :PORT"),
            ("[127.0.0.1]:80", "only an IPv6 address goes in brackets"),
            ("::1:8125", "an IPv6 address must be in brackets, e.g. [::1]:8125"),
            ("localhost:65536", "the port must be a number from 0 to 65535"),
            ("localhost:", "the port must be a number from 0 to 65535"),
            ("localhost:+80", "the port must be a number from 0 to 65535"),
        ]
        for (text, reason) in cases {
            do {
                _ = try NetworkAddress(parsing: text)
                Issue.record("\(text) was accepted")
            } catch {
                #expect(error.reason == reason, "\(text)")
            }
        }
    }

    @Test("only regular files are read: a FIFO is refused at once, a link only when not followed")
    func regularFiles() throws {
        var template = Array("/tmp/p2pm-edge-unit-XXXXXX".utf8CString)
        let directory = String(cString: try #require(mkdtemp(&template)))
        defer {
            for name in ["fifo", "file", "link"] { unlink("\(directory)/\(name)") }
            rmdir(directory)
        }
        let fd = open("\(directory)/file", O_WRONLY | O_CREAT, 0o600)
        #expect(write(fd, "hello", 5) == 5)
        close(fd)
        #expect(mkfifo("\(directory)/fifo", 0o600) == 0)
        #expect(symlink("\(directory)/file", "\(directory)/link") == 0)

        #expect(try RegularFile.read("\(directory)/file", followSymlinks: false) == Array("hello".utf8))
        #expect(try RegularFile.read("\(directory)/link", followSymlinks: true) == Array("hello".utf8))
        for (name, follow, reason) in [("fifo", true, "not a regular file (a FIFO)"),
                                       ("link", false, "not a regular file (a symbolic link)"),
                                       ("", true, "not a regular file (a directory)")] {
            do {
                _ = try RegularFile.read("\(directory)/\(name)", followSymlinks: follow)
                Issue.record("\(name) was read")
            } catch {
                #expect(error.reason == reason && !error.absent)
            }
        }
        do {
            _ = try RegularFile.read("\(directory)/missing", followSymlinks: false)
            Issue.record("a missing file was read")
        } catch {
            #expect(error.absent)
        }
    }

    @Test("supplementary groups come from /proc/PID/status only while uid and gid match")
    func supplementaryGroups() {
        let me = SenderCredentials(pid: getpid(), uid: getuid(), gid: getgid())
        var groups = [gid_t](repeating: 0, count: Int(getgroups(0, nil)))
        let n = getgroups(Int32(groups.count), &groups)
        #expect(SupplementaryGroups.read(me) == Array(groups.prefix(Int(max(n, 0)))))
        // Another uid than the process has: never its groups (a reused pid lends nothing).
        #expect(SupplementaryGroups.read(SenderCredentials(pid: getpid(), uid: getuid() &+ 1, gid: getgid())) == [])
        #expect(SupplementaryGroups.read(SenderCredentials(pid: Int32.max, uid: 0, gid: 0)) == [])
    }

    @Test("a reload names what only a restart applies, including entries of metrics that have series")
    func keptUntilRestart() throws {
        let running = ServerConfiguration(
            socketPath: "/run/a.sock", listenAddress: try NetworkAddress(parsing: "127.0.0.1:9478"), version: "t")
        var new = running
        #expect(new.keysKeptUntilRestart(running: running, existingMetrics: []) == [])
        new.listenAddress = try NetworkAddress(parsing: ":9478")
        new.maxConnections = 5
        new.store.allowedUIDs = [1]  // applied at once: not listed
        new.store.maxSeries = 10  // applied at once: not listed
        new.store.metrics.append(MetricDescriptor(name: "old.one", type: .gauge, help: "changed"))
        new.store.metrics.append(MetricDescriptor(name: "new.one", type: .gauge, help: "new"))
        #expect(new.keysKeptUntilRestart(running: running, existingMetrics: ["old_one"])
                == ["limits.max_http_connections", "listen", "metrics.old.one"])
    }

    @Test("signal names for the log")
    func signalNames() {
        #expect(ProcessSignals.name(SIGTERM) == "SIGTERM")
        #expect(ProcessSignals.name(SIGHUP) == "SIGHUP")
        #expect(ProcessSignals.name(__libc_current_sigrtmin() + 5) == "SIGRTMIN+5")
        #expect(!ProcessSignals.terminating.contains(SIGHUP) && !ProcessSignals.terminating.contains(SIGPIPE))
        #expect(!ProcessSignals.terminating.contains(SIGSEGV))
    }
}
