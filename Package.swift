// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "p2pmetricsd",
    products: [
        .executable(name: "p2pmetricsd", targets: ["p2pmetricsd"]),
        .library(name: "P2PMetricsWire", targets: ["P2PMetricsWire"]),
        // The core modules, for the fuzzers (Tests/Fuzz) and the benchmarks (Benchmarks/).
        .library(name: "P2PMetricsStore", targets: ["P2PMetricsStore"]),
        .library(name: "P2PMetricsExposition", targets: ["P2PMetricsExposition"]),
        .library(name: "P2PMetricsHTTP", targets: ["P2PMetricsHTTP"]),
        .library(name: "P2PMetrics", targets: ["P2PMetrics"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    ],
    targets: [
        // Core: plain Swift, no C dependency, testable without sockets.
        // wire codec ← store/aggregation ← exposition; HTTP parsing beside them.
        // libm: rounding of doubles (canonical value forms, sketches), for every consumer.
        .target(name: "P2PMetricsWire", linkerSettings: [.linkedLibrary("m")]),
        .target(name: "P2PMetricsStatsD", dependencies: ["P2PMetricsWire"]),
        .target(name: "P2PMetricsStore", dependencies: ["P2PMetricsWire", "P2PMetricsStatsD"],
                linkerSettings: [.linkedLibrary("m")]),
        .target(name: "P2PMetricsExposition", dependencies: ["P2PMetricsStore", "P2PMetricsStatsD"]),
        .target(name: "P2PMetricsHTTP"),

        // Edge: libuv and systemd.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "CDatagramSocket"),
        .target(
            name: "P2PMetricsServer",
            dependencies: ["P2PMetricsStore", "P2PMetricsExposition", "P2PMetricsHTTP", "CLibUV", "CSystemd", "CDatagramSocket", "CZlib"]
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
        .testTarget(name: "P2PMetricsWireTests", dependencies: ["P2PMetricsWire", "P2PMetricsStore", "P2PMetricsTestVectors"]),
        .testTarget(name: "P2PMetricsStoreTests", dependencies: ["P2PMetricsStore", "P2PMetricsWire"]),
        .testTarget(name: "P2PMetricsExpositionTests", dependencies: ["P2PMetricsExposition", "P2PMetricsStore", "P2PMetricsWire"]),
        .testTarget(name: "P2PMetricsHTTPTests", dependencies: ["P2PMetricsHTTP", "P2PMetricsTestVectors"]),
        .testTarget(name: "P2PMetricsServerTests", dependencies: ["P2PMetricsServer", "P2PMetricsStore"]),
        .testTarget(name: "P2PMetricsStatsDTests", dependencies: ["P2PMetricsStatsD", "P2PMetricsStore", "P2PMetricsWire"]),
        .testTarget(
            name: "P2PMetricsTests",
            dependencies: ["P2PMetrics", "P2PMetricsWire", "P2PMetricsTestVectors", .product(name: "Metrics", package: "swift-metrics")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
