import Foundation

/// The committed inputs of a fuzz target (`Tests/Fuzz/seeds`, `corpus` and `regressions`), which
/// the normal test run replays so that every past finding stays fixed without libFuzzer.
public enum FuzzInputs {
    public static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz")

    /// Every input file of `target`, by its path relative to `Tests/Fuzz`.
    public static func of(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
        var out: [(String, [UInt8])] = []
        for kind in ["seeds", "corpus", "regressions"] {
            let dir = directory.appendingPathComponent(kind).appendingPathComponent(target)
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { continue }
            for name in names.sorted() where !name.hasPrefix(".") {
                let data = try Data(contentsOf: dir.appendingPathComponent(name))
                out.append(("\(kind)/\(target)/\(name)", [UInt8](data)))
            }
        }
        return out
    }
}
