// swift-tools-version: 6.1
// libFuzzer targets for p2pmetricsd. A separate package so that the daemon's own build never
// needs sanitizers; `./run-fuzzers` builds it with `--sanitize=fuzzer --sanitize=address`.
import PackageDescription

let package = Package(
    name: "p2pmetricsd-fuzz",
    dependencies: [
        .package(name: "p2pmetricsd", path: "../.."),
    ],
    targets: [
        // The invariant check the targets share.
        .target(name: "FuzzSupport"),
        // Wire decoder + datagram input + aggregation store: DatagramInput.ingest with invariant and
        // round-trip oracles.
        .executableTarget(
            name: "FuzzDecoder",
            dependencies: [
                .product(name: "P2PMetricsWire", package: "p2pmetricsd"),
                .product(name: "P2PMetricsStore", package: "p2pmetricsd"),
                .product(name: "P2PMetricsInputDatagram", package: "p2pmetricsd"),
                "FuzzSupport",
            ]
        ),
        // OTLP decoder + input + store: OTLPInput.ingest three times (new, existing and expired
        // cumulative streams) with invariant oracles.
        .executableTarget(
            name: "FuzzOTLP",
            dependencies: [
                .product(name: "P2PMetricsInputOTLP", package: "p2pmetricsd"),
                .product(name: "P2PMetricsStore", package: "p2pmetricsd"),
                "FuzzSupport",
            ]
        ),
        // HTTP request-head parser.
        .executableTarget(
            name: "FuzzHTTP",
            dependencies: [
                .product(name: "P2PMetricsHTTP", package: "p2pmetricsd"),
                "FuzzSupport",
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
