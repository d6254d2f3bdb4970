// libFuzzer target: one input is the bytes a client sent on a scrape connection so far.
//
// `HTTPRequestParser.parse` runs with the default limits; the invariants below must hold for every
// input. A violated invariant prints `INVARIANT VIOLATED [name]` and aborts, so libFuzzer saves
// the input. While a reported bug is being fixed its check can be skipped: FUZZ_SKIP_CHECKS=name,name.

import P2PMetricsHTTP
import FuzzSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif


let limits = HTTPLimits()

func parse(_ bytes: UnsafeRawBufferPointer) -> HTTPParseResult {
    HTTPRequestParser.parse(bytes, limits: limits)
}

/// Prefix lengths to re-parse: all of them for short inputs, the first and last few and a spread
/// in between for long ones (each parse is linear: all prefixes of 8 KiB would be quadratic).
func prefixLengths(below n: Int) -> [Int] {
    if n <= 64 { return Array(0..<n) }
    var lengths = Array(0..<16) + Array((n - 8)..<n)
    let step = max(1, (n - 24) / 16)
    lengths += stride(from: 16, to: n - 8, by: step)
    return lengths
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    let result = parse(raw)

    // Deterministic, and independent of where the bytes live.
    check(parse(raw) == result, "deterministic", "two parses of the same bytes differ")
    let copy = Array(raw)
    check(copy.withUnsafeBytes { parse($0) } == result, "address_independent", "parse of a copy differs")

    switch result {
    case .request(let head, let consumed):
        check(consumed > 0, "consumed_positive", "request consumed \(consumed) bytes")
        check(consumed <= raw.count, "consumed_in_bounds", "consumed \(consumed) of \(raw.count) bytes")
        check(consumed <= limits.maxHeadBytes, "consumed_within_limit", "head of \(consumed) bytes accepted")
        check(consumed >= 4 && raw[consumed - 4] == 0x0D && raw[consumed - 3] == 0x0A
                && raw[consumed - 2] == 0x0D && raw[consumed - 1] == 0x0A,
              "head_ends_with_blank_line", "consumed \(consumed) bytes that do not end with CRLF CRLF")
        check(head.path.hasPrefix("/"), "path_absolute", "path \(head.path.debugDescription)")
        check(!head.path.utf8.contains(0x3F), "path_without_query", "path \(head.path.debugDescription)")
        check(!head.method.isEmpty, "method_nonempty", "empty method")
        check(head.minorVersion == 0 || head.minorVersion == 1, "version", "HTTP/1.\(head.minorVersion)")
        guard consumed > 0 && consumed <= raw.count else { return 0 }
        // The head alone parses to the same request: nothing after it is looked at.
        let headOnly = UnsafeRawBufferPointer(rebasing: raw[0..<consumed])
        check(parse(headOnly) == result, "head_alone_same", "the head alone parses differently")
        // Every proper prefix of a complete head is only incomplete: a client that sends it byte
        // by byte is neither refused nor answered early.
        for n in prefixLengths(below: consumed) {
            let prefix = parse(UnsafeRawBufferPointer(rebasing: raw[0..<n]))
            check(prefix == .incomplete, "prefix_incomplete",
                  "prefix of \(n) of a \(consumed)-byte head: \(prefix)")
        }
    case .incomplete:
        check(raw.count < limits.maxHeadBytes, "incomplete_within_limit",
              "\(raw.count) bytes still incomplete (limit \(limits.maxHeadBytes))")
        // Prefixes of an incomplete head are incomplete or refused, never a request.
        for n in prefixLengths(below: raw.count) {
            if case .request = parse(UnsafeRawBufferPointer(rebasing: raw[0..<n])) {
                check(false, "prefix_of_incomplete", "prefix of \(n) bytes is a request, the whole is incomplete")
            }
        }
    case .failure:
        // Prefixes must not crash either; what they return depends on how far they got.
        for n in prefixLengths(below: raw.count) {
            _ = parse(UnsafeRawBufferPointer(rebasing: raw[0..<n]))
        }
    }
    return 0
}
