import Testing
@testable import P2PMetricsHTTP

func parse(_ text: String, limits: HTTPLimits = HTTPLimits()) -> HTTPParseResult {
    Array(text.utf8).withUnsafeBytes { HTTPRequestParser.parse($0, limits: limits) }
}

@Suite("HTTP request parsing and routing")
struct HTTPParserTests {
    @Test("a Prometheus scrape request")
    func prometheusRequest() throws {
        let text = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9478\r\nUser-Agent: Prometheus/2.42.0\r\n"
            + "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
            + "Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\nGET /next"
        guard case .request(let head, let consumed) = parse(text) else { Issue.record("not parsed"); return }
        #expect(head.method == "GET")
        #expect(head.path == "/metrics")
        #expect(head.minorVersion == 1)
        #expect(head.keepAlive)
        #expect(!head.hasBody)
        #expect(head.acceptEncoding == "gzip")
        #expect(consumed == text.utf8.count - "GET /next".utf8.count)
        #expect(HTTPRoute(head) == .metrics)
    }

    @Test("keep-alive rules of 1.0 and 1.1")
    func keepAlive() {
        guard case .request(let a, _) = parse("GET / HTTP/1.0\r\n\r\n"),
              case .request(let b, _) = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
              case .request(let c, _) = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") else {
            Issue.record("not parsed"); return
        }
        #expect(!a.keepAlive)
        #expect(b.keepAlive)
        #expect(!c.keepAlive)
    }

    @Test("query strings are ignored for routing; other paths and methods are refused")
    func routing() {
        func route(_ requestLine: String) -> HTTPRoute? {
            guard case .request(let head, _) = parse(requestLine + "\r\nHost: x\r\n\r\n") else { return nil }
            return HTTPRoute(head)
        }
        #expect(route("GET /metrics?name[]=x HTTP/1.1") == .metrics)
        #expect(route("HEAD /metrics HTTP/1.1") == .metrics)
        #expect(route("GET /-/healthy HTTP/1.1") == .health)
        #expect(route("POST /metrics HTTP/1.1") == .methodNotAllowed)
        #expect(route("DELETE /metrics HTTP/1.1") == .methodNotAllowed)
        #expect(route("GET /metricsx HTTP/1.1") == .notFound)
        #expect(route("GET /../etc/passwd HTTP/1.1") == .notFound)
    }

    @Test("incomplete heads wait; garbage, oversize and bad versions are refused with their status")
    func failures() {
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n") == .incomplete)
        #expect(parse("") == .incomplete)
        #expect(parse("\u{16}\u{03}\u{01}\u{02}") == .failure(.malformed))  // a TLS hello
        #expect(parse("GET /metrics HTTP/1.1\r\n\r\n") == .failure(.malformed))  // no Host
        #expect(parse("GET metrics HTTP/1.1\r\nHost: x\r\n\r\n") == .failure(.malformed))
        #expect(parse("GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n") == .failure(.unsupportedVersion))
        #expect(parse("GET /metrics FTP/1.0\r\n\r\n") == .failure(.malformed))
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n") == .failure(.malformed))
        #expect(parse("GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n") == .failure(.malformed))
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n") == .failure(.malformed))
        #expect(parse("GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == .failure(.malformed))
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n") == .failure(.malformed))
        let huge = "GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + String(repeating: "a", count: 9000)
        #expect(parse(huge) == .failure(.headTooLarge))
        let many = "GET / HTTP/1.1\r\nHost: x\r\n" + String(repeating: "X: y\r\n", count: 64) + "\r\n"
        #expect(parse(many) == .failure(.tooManyHeaders))
    }

    @Test("requests that announce a body are marked, so the connection closes after the answer")
    func bodies() {
        guard case .request(let head, _) = parse("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
              case .request(let chunked, _) = parse("GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n") else {
            Issue.record("not parsed"); return
        }
        #expect(head.hasBody)
        #expect(chunked.hasBody)
    }

    @Test("response heads")
    func responses() {
        let head = String(decoding: HTTPResponseHead.simple(.methodNotAllowed, body: "no\n", minorVersion: 1, keepAlive: false,
                                                            extraHeaders: [("Allow", "GET, HEAD")]), as: UTF8.self)
        #expect(head == "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n"
                + "Allow: GET, HEAD\r\nConnection: close\r\n\r\nno\n")
    }
}
