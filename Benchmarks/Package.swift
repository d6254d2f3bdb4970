// swift-tools-version: 6.1
// In-process benchmarks of p2pmetricsd (decode, aggregate, render) with ordo-one/benchmark.
// Run: `swift package benchmark` here, or `make bench` at the top level (the whole matrix).
import Foundation
import PackageDescription

// The main package, by path: ".." unless P2PM_MAIN_PACKAGE names another checkout of it. Its
// package identity (needed by `.product(package:)`) is the last component of that path.
let mainPath = ProcessInfo.processInfo.environment["P2PM_MAIN_PACKAGE"] ?? ".."
let mainIdentity = URL(
    fileURLWithPath: mainPath,
    relativeTo: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
).standardizedFileURL.lastPathComponent.lowercased()

let package = Package(
    name: "p2pmetricsd-benchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(path: mainPath),
    ],
    targets: [
        .executableTarget(
            name: "P2PMetricsBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "P2PMetricsWire", package: mainIdentity),
                .product(name: "P2PMetricsStore", package: mainIdentity),
                .product(name: "P2PMetricsExposition", package: mainIdentity),
            ],
            path: "Benchmarks/P2PMetricsBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
