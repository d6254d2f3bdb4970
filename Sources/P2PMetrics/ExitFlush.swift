import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Sends every live client's pending batch when the process exits normally (`exit()` or a return
/// from `main`), so that a short-lived program whose client is never deinitialized — the one
/// bootstrapped into `MetricsSystem` lives forever — does not lose its last ≤ 10 ms of samples.
/// (Signals and `_exit` skip `atexit` handlers: call ``P2PMetricsClient/flush()`` there.)
enum ExitFlush {
    struct WeakClient: Sendable {
        weak var client: P2PMetricsClient?
    }

    static let clients = Mutex<[WeakClient]>([])

    private static let installed: Bool = {
        atexit {
            let live = ExitFlush.clients.withLock { $0.compactMap(\.client) }
            for c in live { c.flush() }
        }
        return true
    }()

    /// Remembers `client` (weakly) for the exit flush.
    static func register(_ client: P2PMetricsClient) {
        _ = installed
        clients.withLock { list in
            list.removeAll { $0.client == nil }
            list.append(WeakClient(client: client))
        }
    }
}

/// Counts the `fork()`s of this process (a `pthread_atfork` child handler), so that a client can
/// tell, at its next call, that it now lives in a child and must drop what it inherited.
enum ForkGeneration {
    static let counter = Atomic<Int>(0)

    private static let installed: Bool = {
        pthread_atfork(nil, nil) { ForkGeneration.counter.add(1, ordering: .relaxed) }
        return true
    }()

    /// The number of forks this process descends from (installs the handler on first use).
    static var current: Int {
        _ = installed
        return counter.load(ordering: .relaxed)
    }
}
