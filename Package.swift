// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "p2pmetricsd",
    products: [
        .executable(name: "p2pmetricsd", targets: ["p2pmetricsd"]),
        .library(name: "P2PMetricsWire", targets: ["P2PMetricsWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // Core: plain Swift, no C dependency, testable without sockets.
        // wire codec ← store/aggregation ← exposition; HTTP parsing beside them.
        .target(name: "P2PMetricsWire"),
        .target(name: "P2PMetricsStore", dependencies: ["P2PMetricsWire"]),
        .target(name: "P2PMetricsExposition", dependencies: ["P2PMetricsStore"]),
        .target(name: "P2PMetricsHTTP"),

        // Edge: libuv and systemd.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .target(name: "CDatagramSocket"),
        .target(
            name: "P2PMetricsServer",
            dependencies: ["P2PMetricsStore", "P2PMetricsExposition", "P2PMetricsHTTP", "CLibUV", "CSystemd", "CDatagramSocket"]
        ),
        .executableTarget(
            name: "p2pmetricsd",
            dependencies: [
                "P2PMetricsServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(name: "P2PMetricsWireTests", dependencies: ["P2PMetricsWire"]),
        .testTarget(name: "P2PMetricsStoreTests", dependencies: ["P2PMetricsStore", "P2PMetricsWire"]),
        .testTarget(name: "P2PMetricsExpositionTests", dependencies: ["P2PMetricsExposition", "P2PMetricsStore", "P2PMetricsWire"]),
        .testTarget(name: "P2PMetricsHTTPTests", dependencies: ["P2PMetricsHTTP"]),
    ],
    swiftLanguageModes: [.v6]
)
