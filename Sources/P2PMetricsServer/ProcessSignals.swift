import Glibc

/// The signals the daemon catches, and their names for the log.
enum ProcessSignals {
    /// Every catchable signal whose default action ends the process, except SIGHUP (reload) and
    /// SIGPIPE (ignored: a scraper that hangs up costs a failed write). Each one
    /// drains, saves state and exits 0. Fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT,
    /// SIGTRAP, SIGSYS) keep their default action: they mean a bug, not a request to stop.
    static var terminating: [Int32] {
        [SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGXCPU, SIGXFSZ,
         SIGPWR, SIGSTKFLT, SIGIO] + Array(__libc_current_sigrtmin()...__libc_current_sigrtmax())
    }

    static func name(_ signal: Int32) -> String {
        let names: [Int32: String] = [
            SIGHUP: "SIGHUP", SIGTERM: "SIGTERM", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGUSR1: "SIGUSR1",
            SIGUSR2: "SIGUSR2", SIGALRM: "SIGALRM", SIGVTALRM: "SIGVTALRM", SIGPROF: "SIGPROF",
            SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ", SIGPWR: "SIGPWR", SIGSTKFLT: "SIGSTKFLT", SIGIO: "SIGIO",
        ]
        if let name = names[signal] { return name }
        let base = __libc_current_sigrtmin()
        return signal >= base ? "SIGRTMIN+\(signal - base)" : "signal \(signal)"
    }
}
