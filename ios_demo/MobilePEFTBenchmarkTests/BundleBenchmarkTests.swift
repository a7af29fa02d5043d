import Foundation
import MobilePEFTCore
import XCTest

/// On-device benchmarks of a bundle's chat turn: the `.pte` through ExecuTorch and the
/// `.mlpackage`s through Core ML, each measured by XCTest (clock + memory, Test Report ->
/// Metrics) and written as the bench JSON `mobilepeft bench` writes (harness `ios-xctest`),
/// attached to the test and saved in NSTemporaryDirectory(). The ORT bundle's training step
/// is benchmarked too (train keys). Run in Release (the scheme does) on a device.
final class BundleBenchmarkTests: XCTestCase {
    // MARK: ExecuTorch

    func testExecuTorchChatTurnMeasured() throws {
        let manifest = try TestBundles.first("an ExecuTorch program") { manifest in manifest.has("executorch") }
        try measureChatTurn(ExecuTorchEngine(manifest: manifest), manifest)
    }

    func testExecuTorchBenchJSON() throws {
        let manifest = try TestBundles.first("an ExecuTorch program") { manifest in manifest.has("executorch") }
        try writeBenchJSON(ExecuTorchEngine(manifest: manifest), manifest)
    }

    // MARK: Core ML

    func testCoreMLChatTurnMeasured() throws {
        let manifest = try TestBundles.first("Core ML packages") { manifest in manifest.has("coreml") }
        try measureChatTurn(CoreMLEngine(manifest: manifest), manifest)
    }

    func testCoreMLBenchJSON() throws {
        let manifest = try TestBundles.first("Core ML packages") { manifest in manifest.has("coreml") }
        try writeBenchJSON(CoreMLEngine(manifest: manifest), manifest)
    }

    // MARK: ONNX Runtime training

    /// A few training steps on synthetic samples (random photo, fixed answer); the bundle's files
    /// are not changed (nothing is saved).
    func testOrtTrainingSteps() throws {
        let manifest = try TestBundles.first("ONNX training artifacts") { manifest in manifest.has("onnx_training") }
        let threads = DeviceInfo.performanceCores
        let personalizer = try OrtPersonalizer.open(manifest: manifest, batchSize: 2, threads: threads)
        let size = try manifest.int("image_preprocessing.size")
        var generator = SeededGenerator(seed: 1)
        let samples = (0..<4).map { i in
            PersonalSample(pixels: (0..<(3 * size * size)).map { _ in Float.random(in: -1.5..<1.5, using: &generator) },
                           turns: [ConversationTurn(question: personalizer.template.withImage("What is in the picture?"),
                                                    answer: "A red square number \(i).")])
        }
        let steps = TestBundles.settings.runs * 2
        try personalizer.prepare(samples)
        let report = try personalizer.train(settings: PersonalizeSettings(steps: steps, batchSize: 2))
        XCTAssertNil(report.stoppedEarly, report.stoppedEarly ?? "")
        XCTAssertEqual(report.steps, steps)
        XCTAssertTrue(report.trainLosses.allSatisfy(\.isFinite))
        XCTAssertTrue(report.evalLossBefore.isFinite && report.evalLossAfter.isFinite)
        try attach(report.benchResult(harness: "ios-xctest", threads: threads), name: "bench_train_\(manifest.directory.lastPathComponent)")
    }

    // MARK: Helpers

    /// XCTest's own measurement: one chat turn per iteration, after loading and one warm-up turn.
    private func measureChatTurn(_ engine: InferenceEngine, _ manifest: Manifest) throws {
        let benchmark = try ChatTurnBenchmark(manifest: manifest, settings: TestBundles.settings)
        try engine.load()
        _ = try benchmark.runOnce(engine)
        let options = XCTMeasureOptions()
        options.iterationCount = benchmark.settings.runs
        var failure: Error?
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()], options: options) {
            do {
                _ = try benchmark.runOnce(engine)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
    }

    /// The bench JSON (load timed, warm-up, medians with min/max), attached and saved.
    private func writeBenchJSON(_ engine: InferenceEngine, _ manifest: Manifest) throws {
        let benchmark = try ChatTurnBenchmark(manifest: manifest, settings: TestBundles.settings)
        let result = try benchmark.run(engine, harness: "ios-xctest")
        for key in ["model_load_time_ms", "vision_encode_ms", "prefill_tokens_per_s", "decode_tokens_per_s",
                    "time_to_first_token_ms", "peak_rss_mb"] {
            let value = result.value(key) as? Double
            XCTAssertNotNil(value, key)
            XCTAssertGreaterThan(value ?? 0, 0, key)
        }
        try attach(result, name: "bench_\(engine.runtime)_\(manifest.directory.lastPathComponent)")
    }

    private func attach(_ result: BenchResult, name: String) throws {
        let data = try result.jsonData()
        let file = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("\(name).json")
        try data.write(to: file, options: .atomic)
        let attachment = XCTAttachment(data: data, uniformTypeIdentifier: "public.json")
        attachment.name = "\(name).json"
        attachment.lifetime = .keepAlways
        add(attachment)
        print("wrote \(file.path)\n\(String(decoding: data, as: UTF8.self))")
    }
}
