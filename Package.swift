// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "p2pmetricsd",
    products: [
        .executable(name: "p2pmetricsd", targets: ["p2pmetricsd"]),
        .library(name: "P2PMetricsWire", targets: ["P2PMetricsWire"]),
        // The core modules, for the fuzzers (Tests/Fuzz) and the benchmarks (Benchmarks/).
        .library(name: "P2PMetricsStore", targets: ["P2PMetricsStore"]),
        .library(name: "P2PMetricsInputStatsD", targets: ["P2PMetricsInputStatsD"]),
        .library(name: "P2PMetricsInputDatagram", targets: ["P2PMetricsInputDatagram"]),
        .library(name: "P2PMetricsInputOTLP", targets: ["P2PMetricsInputOTLP"]),
        .library(name: "P2PMetricsExposition", targets: ["P2PMetricsExposition"]),
        .library(name: "P2PMetricsHTTP", targets: ["P2PMetricsHTTP"]),
        .library(name: "P2PMetrics", targets: ["P2PMetrics"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    ],
    targets: [
        // Core: plain Swift, no C dependency, testable without sockets. The flow (README,
        // "Architecture"): inputs → store → exposition.
        //   wire codec: the protocol's sample records, the store's one sample form (and the clients');
        //   inputs (Sources/Inputs): each turns its bytes into sample records and counts its own
        //     traffic and refusals: the ingest socket's datagrams (binary applied as they are, text
        //     handed to StatsD), text StatsD / DogStatsD, OTLP metrics (protobuf; the HTTP side is in the server);
        //   store: aggregation of sample records, knowing no input format;
        //   exposition: the store rendered (it reads the inputs' counters as plain values).
        // HTTP parsing beside them. libm: rounding of doubles (canonical value forms, sketches).
        .target(name: "P2PMetricsWire", linkerSettings: [.linkedLibrary("m")]),
        .target(name: "P2PMetricsStore", dependencies: ["P2PMetricsWire"], linkerSettings: [.linkedLibrary("m")]),
        .target(name: "P2PMetricsInputStatsD", dependencies: ["P2PMetricsStore", "P2PMetricsWire"], path: "Sources/Inputs/StatsD"),
        .target(name: "P2PMetricsInputDatagram", dependencies: ["P2PMetricsInputStatsD", "P2PMetricsStore", "P2PMetricsWire"],
                path: "Sources/Inputs/Datagram"),
        .target(name: "P2PMetricsInputOTLP", dependencies: ["P2PMetricsInputStatsD", "P2PMetricsStore", "P2PMetricsWire"],
                path: "Sources/Inputs/OTLP"),
        .target(name: "P2PMetricsExposition", dependencies: ["P2PMetricsStore"]),
        .target(name: "P2PMetricsHTTP"),

        // Edge: libuv and systemd.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "CDatagramSocket"),
        .target(name: "CPidfd"),
        .target(
            name: "P2PMetricsServer",
            dependencies: ["P2PMetricsStore", "P2PMetricsInputDatagram", "P2PMetricsInputOTLP", "P2PMetricsExposition", "P2PMetricsHTTP", "CLibUV", "CSystemd", "CDatagramSocket", "CPidfd", "CZlib"]
        ),
        .executableTarget(
            name: "p2pmetricsd",
            dependencies: [
                "P2PMetricsServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Swift client: a swift-metrics backend plus the seed's typed API, on the shared wire codec.
        .target(
            name: "P2PMetrics",
            dependencies: ["P2PMetricsWire", .product(name: "CoreMetrics", package: "swift-metrics")]
        ),
        .executableTarget(
            name: "p2pmetrics-example",
            dependencies: ["P2PMetrics", .product(name: "Metrics", package: "swift-metrics")]
        ),

        // Shared test inputs: the wire test vectors' parser and the committed fuzz inputs.
        .target(name: "P2PMetricsTestVectors", dependencies: ["P2PMetricsWire"], path: "Tests/TestVectors"),
        .testTarget(name: "P2PMetricsWireTests", dependencies: ["P2PMetricsWire", "P2PMetricsStore", "P2PMetricsInputDatagram", "P2PMetricsTestVectors"]),
        .testTarget(name: "P2PMetricsStoreTests", dependencies: ["P2PMetricsStore", "P2PMetricsWire", "P2PMetricsTestVectors"]),
        .testTarget(name: "P2PMetricsExpositionTests", dependencies: ["P2PMetricsExposition", "P2PMetricsStore", "P2PMetricsWire", "P2PMetricsTestVectors"]),
        .testTarget(name: "P2PMetricsHTTPTests", dependencies: ["P2PMetricsHTTP", "P2PMetricsTestVectors"]),
        .testTarget(name: "P2PMetricsServerTests", dependencies: ["P2PMetricsServer", "P2PMetricsStore"]),
        .testTarget(name: "P2PMetricsInputTests", dependencies: ["P2PMetricsInputOTLP", "P2PMetricsInputStatsD", "P2PMetricsInputDatagram", "P2PMetricsStore", "P2PMetricsWire", "P2PMetricsTestVectors"]),
        .testTarget(
            name: "P2PMetricsTests",
            dependencies: ["P2PMetrics", "P2PMetricsWire", "P2PMetricsTestVectors", .product(name: "Metrics", package: "swift-metrics")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
