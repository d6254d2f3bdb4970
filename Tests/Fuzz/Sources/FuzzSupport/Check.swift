// The invariant check shared by the fuzz targets: a violated invariant prints
// `INVARIANT VIOLATED [name]` and aborts, so libFuzzer saves the input. While a reported bug is
// being fixed its check can be skipped: FUZZ_SKIP_CHECKS=name,name.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

let skippedChecks: Set<String> = {
    guard let raw = getenv("FUZZ_SKIP_CHECKS") else { return [] }
    return Set(String(cString: raw).split(separator: ",").map(String.init))
}()

@inline(__always)
public func check(_ condition: @autoclosure () -> Bool, _ name: StaticString, _ message: @autoclosure () -> String) {
    if condition() { return }
    let key = "\(name)"
    if skippedChecks.contains(key) { return }
    let line = "INVARIANT VIOLATED [\(key)]: \(message())\n"
    line.withCString { _ = write(2, $0, strlen($0)) }
    abort()
}
