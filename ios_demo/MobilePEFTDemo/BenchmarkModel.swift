import Foundation
import MobilePEFTCore

enum BenchRuntime: String, CaseIterable, Identifiable {
    case executorch, coreml

    var id: String { rawValue }
    var title: String { self == .executorch ? "ExecuTorch (.pte)" : "Core ML (.mlpackage)" }

    func engine(_ manifest: Manifest) throws -> InferenceEngine {
        switch self {
        case .executorch: return try ExecuTorchEngine(manifest: manifest)
        case .coreml: return try CoreMLEngine(manifest: manifest)
        }
    }
}

/// The Benchmark screen's state: the picked bundle, the runtime, the settings, the result.
@MainActor
final class BenchmarkModel: ObservableObject {
    @Published private(set) var bundle: BundleFolder?
    @Published private(set) var runtimes: [BenchRuntime] = []
    @Published var runtime: BenchRuntime = .executorch
    @Published var settings = ChatTurnSettings()
    @Published private(set) var isRunning = false
    @Published private(set) var log: [String] = []
    @Published private(set) var result: BenchResult?
    @Published private(set) var resultFile: URL?
    @Published var error: String?

    func open(_ picked: Result<URL, Error>) {
        error = nil
        result = nil
        resultFile = nil
        do {
            let folder = try BundleFolder(url: picked.get())
            let manifest = folder.manifest
            var available: [BenchRuntime] = []
            if manifest.has("executorch") { available.append(.executorch) }
            if manifest.has("coreml") { available.append(.coreml) }
            guard let first = available.first else {
                throw MobilePEFTError("\(folder.name) has neither a .pte nor Core ML packages (an ONNX training bundle? use Personalize)")
            }
            bundle = folder
            runtimes = available
            runtime = first
        } catch {
            self.error = error.localizedDescription
        }
    }

    func run() {
        guard let bundle, !isRunning else { return }
        isRunning = true
        error = nil
        log = []
        result = nil
        resultFile = nil
        let runtime = self.runtime, settings = self.settings
        Task.detached(priority: .userInitiated) {
            do {
                let benchmark = try ChatTurnBenchmark(manifest: bundle.manifest, settings: settings)
                let engine = try runtime.engine(bundle.manifest)
                let result = try benchmark.run(engine, harness: "ios-app") { line in
                    Task { @MainActor in self.log.append(line) }
                }
                let file = BundleFolder.documents.appendingPathComponent(
                    "bench_\(bundle.name)_\(runtime.rawValue)_\(Int(Date().timeIntervalSince1970)).json")
                try result.write(to: file)
                await MainActor.run {
                    self.result = result
                    self.resultFile = file
                    self.isRunning = false
                }
            } catch {
                await MainActor.run {
                    self.error = error.localizedDescription
                    self.isRunning = false
                }
            }
        }
    }
}
