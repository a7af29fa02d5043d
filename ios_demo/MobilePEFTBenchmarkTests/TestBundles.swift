import Foundation
import MobilePEFTCore
import XCTest

/// Bundles to benchmark: the folder named by the `MOBILEPEFT_BUNDLE` environment variable (a
/// bundle, or a folder of bundles; pass it as `TEST_RUNNER_MOBILEPEFT_BUNDLE=...` to
/// xcodebuild), else every bundle copied into the test bundle's `Bundles/` resources.
enum TestBundles {
    static func all() throws -> [Manifest] {
        let environment = ProcessInfo.processInfo.environment
        let roots: [URL]
        if let path = environment["MOBILEPEFT_BUNDLE"], !path.isEmpty {
            roots = [URL(fileURLWithPath: path)]
        } else if let resources = Bundle(for: BundleBenchmarkTests.self).resourceURL {
            roots = [resources.appendingPathComponent("Bundles")]
        } else {
            roots = []
        }
        var manifests: [Manifest] = []
        for root in roots {
            for folder in try candidates(root) {
                manifests.append(try Manifest.load(directory: folder))
            }
        }
        return manifests
    }

    /// The first bundle `wanted` accepts; skips the test when there is none.
    static func first(_ what: String, where wanted: (Manifest) -> Bool) throws -> Manifest {
        guard let manifest = try all().first(where: wanted) else {
            throw XCTSkip("no bundle with \(what): copy one into MobilePEFTBenchmarkTests/Resources/Bundles/ or set MOBILEPEFT_BUNDLE")
        }
        return manifest
    }

    /// `root` itself when it is a bundle, else its sub-folders that are, sorted by name.
    private static func candidates(_ root: URL) throws -> [URL] {
        let manager = FileManager.default
        if manager.fileExists(atPath: root.appendingPathComponent(Manifest.fileName).path) { return [root] }
        guard manager.fileExists(atPath: root.path) else { return [] }
        return try manager.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)
            .filter { manager.fileExists(atPath: $0.appendingPathComponent(Manifest.fileName).path) }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    /// Chat-turn settings, overridable with MOBILEPEFT_PROMPT_LEN / _GEN_LEN / _RUNS / _WARMUP.
    static var settings: ChatTurnSettings {
        let environment = ProcessInfo.processInfo.environment
        func value(_ key: String, _ fallback: Int) -> Int { environment[key].flatMap { Int($0) } ?? fallback }
        return ChatTurnSettings(promptLength: value("MOBILEPEFT_PROMPT_LEN", 32), genLength: value("MOBILEPEFT_GEN_LEN", 32),
                                runs: value("MOBILEPEFT_RUNS", 5), warmup: value("MOBILEPEFT_WARMUP", 1))
    }
}
