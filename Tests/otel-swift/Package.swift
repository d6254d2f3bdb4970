// swift-tools-version:6.2
// The seed's metrics through swift-metrics -> swift-otel -> OTLP/HTTP protobuf, for
// Tests/integration/test_otlp_swift_otel.py. A package of its own (its own .build), so the daemon's
// build never compiles swift-otel and its dependencies (AsyncHTTPClient, SwiftNIO, swift-protobuf).
import PackageDescription

let package = Package(
    name: "otel-swift",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Only the OTLP/HTTP exporter: the default traits would also build the gRPC one.
        .package(url: "https://github.com/swift-otel/swift-otel.git", exact: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        .executableTarget(
            name: "seed-otel",
            dependencies: [
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
