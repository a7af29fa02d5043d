import CoreGraphics
import Foundation
import MobilePEFTCore
import XCTest

/// The pure logic of MobilePEFTCore against what mobilepeft's Python code computes: tokenizer
/// ids, prompts and training rows from Fixtures/core_cases.json (written by
/// Fixtures/make_fixtures.py from `Tokenizer`, `build_prompt_ids` and `encode_sample`), plus
/// the manifest reader, bundle verification (FIPS 180-4's SHA-256 examples), statistics, image
/// preprocessing and batching.
final class CoreLogicTests: XCTestCase {
    private var fixtures: URL {
        get throws {
            guard let resources = Bundle(for: CoreLogicTests.self).resourceURL else {
                throw XCTSkip("the test bundle has no resources")
            }
            return resources.appendingPathComponent("Fixtures")
        }
    }

    private func cases() throws -> [String: Any] {
        let data = try Data(contentsOf: try fixtures.appendingPathComponent("core_cases.json"))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    private func fixtureManifest() throws -> Manifest {
        let directory = try fixtures
        return try Manifest.parse(try Data(contentsOf: directory.appendingPathComponent("manifest.json")), directory: directory)
    }

    private func template() throws -> ConversationTemplate {
        let manifest = try fixtureManifest()
        let tokenizer = try SentencePieceTokenizer(contentsOf: manifest.directory.appendingPathComponent(manifest.string("tokenizer.file")))
        return try ConversationTemplate(manifest: manifest, tokenizer: tokenizer)
    }

    private static func turns(_ value: Any?) throws -> [ConversationTurn] {
        let pairs = try XCTUnwrap(value as? [[String]])
        return pairs.map { ConversationTurn(question: $0[0], answer: $0[1]) }
    }

    // MARK: Tokenizer and template (Python parity)

    func testEncodeMatchesPythonTokenizer() throws {
        let tokenizer = try template().tokenizer
        for case let item as [String: Any] in try XCTUnwrap(cases()["encode"] as? [Any]) {
            let text = try XCTUnwrap(item["text"] as? String)
            XCTAssertEqual(tokenizer.encode(text), try XCTUnwrap(item["ids"] as? [Int]), "encode(\(text.debugDescription))")
        }
    }

    func testDecodeMatchesPythonTokenizer() throws {
        let tokenizer = try template().tokenizer
        for case let item as [String: Any] in try XCTUnwrap(cases()["decode"] as? [Any]) {
            let ids = try XCTUnwrap(item["ids"] as? [Int])
            XCTAssertEqual(tokenizer.decode(ids), try XCTUnwrap(item["text"] as? String), "decode(\(ids))")
        }
    }

    func testPromptIdsMatchBuildPromptIds() throws {
        let template = try template()
        for case let item as [String: Any] in try XCTUnwrap(cases()["prompts"] as? [Any]) {
            let question = try XCTUnwrap(item["question"] as? String)
            XCTAssertEqual(try template.promptIds(question: question), try XCTUnwrap(item["ids"] as? [Int]), question)
        }
        XCTAssertThrowsError(try template.promptIds(question: "<image> twice <image>"))
    }

    func testRowsMatchEncodeSample() throws {
        let template = try template()
        for case let item as [String: Any] in try XCTUnwrap(cases()["rows"] as? [Any]) {
            let row = try template.encodeRow(try CoreLogicTests.turns(item["turns"]), seqLen: try XCTUnwrap(item["seq_len"] as? Int))
            XCTAssertEqual(row.inputIds.map { Int($0) }, try XCTUnwrap(item["input_ids"] as? [Int]))
            XCTAssertEqual(row.attentionMask.map { Int($0) }, try XCTUnwrap(item["attention_mask"] as? [Int]))
            XCTAssertEqual(row.labels.map { Int($0) }, try XCTUnwrap(item["labels"] as? [Int]))
        }
    }

    func testFirstQuestionTooLongIsAnError() throws {
        let template = try template()
        for case let item as [String: Any] in try XCTUnwrap(cases()["too_long"] as? [Any]) {
            let turns = try CoreLogicTests.turns(item["turns"])
            XCTAssertThrowsError(try template.encodeRow(turns, seqLen: try XCTUnwrap(item["seq_len"] as? Int))) { error in
                XCTAssertTrue("\(error)".contains("max_seq_len"), "\(error)")
            }
        }
    }

    // MARK: Manifest

    func testManifestReadsPathsAndNamesWhatIsWrong() throws {
        let json = """
        {"format": "mobilepeft-bundle", "manifest_version": 1, "max_seq_len": 128, "model": {"hidden_size": "wide"},
         "onnx_training": {"inputs": [{"name": "input_ids", "shape": ["batch", 128]}], "train_projector": false},
         "coreml": {"compute_units": {"vision_encoder": "all", "text_decoder": "cpuAndGPU"}}}
        """
        let manifest = try Manifest.parse(Data(json.utf8), directory: URL(fileURLWithPath: "/tmp"))
        XCTAssertEqual(try manifest.int("max_seq_len"), 128)
        XCTAssertEqual(try manifest.count("onnx_training.inputs[]"), 1)
        XCTAssertEqual(try manifest.string("onnx_training.inputs[].name", 0), "input_ids")
        XCTAssertEqual(try manifest.int("onnx_training.inputs[].shape[]", 0, 1), 128)
        XCTAssertEqual(try manifest.bool("onnx_training.train_projector"), false)
        XCTAssertEqual(try manifest.keys("coreml.compute_units{}"), ["text_decoder", "vision_encoder"])
        XCTAssertEqual(try manifest.string("coreml.compute_units{}", "text_decoder"), "cpuAndGPU")
        XCTAssertTrue(manifest.has("coreml"))
        XCTAssertFalse(manifest.has("executorch"))
        XCTAssertThrowsError(try manifest.string("onnx_training.inputs[].name", 3)) { error in
            XCTAssertTrue("\(error)".contains("manifest.json: onnx_training.inputs[3] is out of range"), "\(error)")
        }
        XCTAssertThrowsError(try manifest.int("onnx_training.inputs[].shape[]", 0, 0)) { error in
            XCTAssertTrue("\(error)".contains("onnx_training.inputs[0].shape[0] should be an integer"), "\(error)")
        }
        XCTAssertThrowsError(try manifest.int("model.hidden_size")) { error in
            XCTAssertTrue("\(error)".contains("model.hidden_size should be an integer, found the string \"wide\""), "\(error)")
        }
        XCTAssertThrowsError(try Manifest.parse(Data(#"{"format": "other"}"#.utf8), directory: URL(fileURLWithPath: "/tmp")))
    }

    // MARK: Bundle verification

    /// FIPS 180-4's examples (empty, "abc", the two-block message, a million "a"s) with their
    /// published SHA-256s: the files of a bundle made by `makeBundle`.
    private static let vectors: [(name: String, data: Data, sha256: String)] = [
        ("empty.bin", Data(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc.txt", Data("abc".utf8), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("two_blocks.txt", Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8),
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        ("model.pte", Data(repeating: UInt8(ascii: "a"), count: 1_000_000),
         "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ]

    private static var vectorNames: Set<String> { Set(vectors.map { $0.name }) }

    /// A new path under the temporary directory, removed after the test.
    private func temporaryPath(_ prefix: String) -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// A bundle of the FIPS example files whose manifest records their sizes and SHA-256s.
    private func makeBundle() throws -> Manifest {
        let directory = temporaryPath("bundle")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var files: [String: Any] = [:]
        for vector in CoreLogicTests.vectors {
            try vector.data.write(to: directory.appendingPathComponent(vector.name))
            files[vector.name] = ["bytes": vector.data.count, "sha256": vector.sha256]
        }
        let data = try JSONSerialization.data(withJSONObject: ["format": "mobilepeft-bundle", "manifest_version": 1, "files": files])
        try data.write(to: directory.appendingPathComponent(Manifest.fileName))
        return try Manifest.parse(data, directory: directory)
    }

    /// Flips 4 KB in the middle of a file in place: same size, other content.
    private func overwriteMiddle(_ url: URL) throws {
        let handle = try FileHandle(forUpdating: url)
        defer { try? handle.close() }
        let middle = try handle.seekToEnd() / 2
        try handle.seek(toOffset: middle)
        let old = try XCTUnwrap(try handle.read(upToCount: 4096))
        try handle.seek(toOffset: middle)
        try handle.write(contentsOf: Data(old.map { $0 ^ 0xFF }))
    }

    func testVerifierHashesTheFIPSExamples() throws {
        let manifest = try makeBundle()
        let report = try BundleVerifier(stampDirectory: nil, mode: .full).verify(manifest)
        XCTAssertEqual(Set(report.hashed), CoreLogicTests.vectorNames)
        XCTAssertNil(report.stamp)
    }

    func testVerifierRefusesAFileOverwrittenInPlaceNamingIt() throws {
        let manifest = try makeBundle()
        let model = manifest.directory.appendingPathComponent("model.pte")
        try overwriteMiddle(model)
        XCTAssertNoThrow(try BundleVerifier(stampDirectory: nil, mode: .size).verify(manifest), "sizes only (unsafe) pass it")
        let actual = try BundleVerifier.sha256(of: model)
        for mode in [BundleVerification.full, .cached] {
            XCTAssertThrowsError(try BundleVerifier(stampDirectory: temporaryPath("stamps"), mode: mode).verify(manifest)) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains("model.pte: SHA-256 is \(actual), manifest.json records "
                    + "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0 for model.pte"), message)
                XCTAssertTrue(message.contains("copy the bundle again, or re-export it"), message)
            }
        }
        XCTAssertThrowsError(try Manifest.load(directory: manifest.directory, verifier: BundleVerifier(stampDirectory: nil)),
                             "Manifest.load verifies")
    }

    func testStampSkipsUnchangedFilesAndALaterWriteIsCaught() throws {
        let manifest = try makeBundle()
        let stamps = temporaryPath("stamps")
        let cached = BundleVerifier(stampDirectory: stamps, mode: .cached)
        // Just written: a second write within the same clock tick could keep the date, so not recorded yet.
        XCTAssertEqual(Set(try cached.verify(manifest).hashed), CoreLogicTests.vectorNames)
        XCTAssertEqual(Set(try cached.verify(manifest).hashed), CoreLogicTests.vectorNames)
        Thread.sleep(forTimeInterval: 2.1)
        let first = try cached.verify(manifest)
        XCTAssertEqual(Set(first.hashed), CoreLogicTests.vectorNames)
        let stamp = try XCTUnwrap(first.stamp)
        XCTAssertEqual(stamp.deletingLastPathComponent().standardizedFileURL.path, stamps.standardizedFileURL.path)
        let second = try cached.verify(manifest)
        XCTAssertEqual(second.hashed, [])
        XCTAssertEqual(Set(second.unchanged), CoreLogicTests.vectorNames)
        XCTAssertEqual(Set(try BundleVerifier(stampDirectory: stamps, mode: .full).verify(manifest).hashed),
                       CoreLogicTests.vectorNames, "full hashes despite the stamp")
        try overwriteMiddle(manifest.directory.appendingPathComponent("model.pte"))
        XCTAssertThrowsError(try cached.verify(manifest)) { error in
            XCTAssertTrue("\(error)".contains("model.pte: SHA-256 is"), "\(error)")
        }
    }

    func testUnwritableStampDirectoryMeansHashingEveryTime() throws {
        let manifest = try makeBundle()
        let blocker = temporaryPath("not-a-folder")
        try Data("a file where the stamp folder should be".utf8).write(to: blocker)
        let verifier = BundleVerifier(stampDirectory: blocker.appendingPathComponent("verified"), mode: .cached)
        for _ in 0..<2 {
            let report = try verifier.verify(manifest)
            XCTAssertEqual(Set(report.hashed), CoreLogicTests.vectorNames)
            XCTAssertNil(report.stamp)
        }
    }

    // MARK: Statistics and results

    func testBenchStatsUsePythonMedian() throws {
        let odd = try BenchStats([3, 1, 2])
        XCTAssertEqual(odd.median, 2)
        XCTAssertEqual(odd.min, 1)
        XCTAssertEqual(odd.max, 3)
        XCTAssertEqual(try BenchStats([4, 1, 2, 3]).median, 2.5)
        XCTAssertThrowsError(try BenchStats([]))
    }

    func testBenchResultWritesExactlyItsKeys() throws {
        var result = BenchResult()
        result.put("threads", 4)
        result.put("backend", "xnnpack")
        result.put("decode_tokens_per_s", 12.5)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: result.jsonData()) as? [String: Any])
        XCTAssertEqual(Set(object.keys), ["threads", "backend", "decode_tokens_per_s"])
        result.put("vision_encode_ms", Double.infinity)
        XCTAssertThrowsError(try result.jsonData())
    }

    // MARK: Images and batches

    func testImagePreprocessingPadsToSquareAndNormalises() throws {
        let manifest = try fixtureManifest()
        let preprocessor = try ImagePreprocessor(manifest: manifest)
        let size = preprocessor.size
        // A solid red image as wide as the target and 7 rows high: no resampling, so the pad
        // rows are exact. PIL's offsets: (size - 7) / 2 = 4 pad rows on top, 5 below.
        let space = try XCTUnwrap(CGColorSpace(name: CGColorSpace.sRGB))
        let context = try XCTUnwrap(CGContext(data: nil, width: size, height: 7, bitsPerComponent: 8, bytesPerRow: 0,
                                              space: space, bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue))
        context.setFillColor(red: 1, green: 0, blue: 0, alpha: 1)
        context.fill(CGRect(x: 0, y: 0, width: size, height: 7))
        let values = try preprocessor.pixelValues(try XCTUnwrap(context.makeImage()))
        XCTAssertEqual(values.count, 3 * size * size)
        let mean = try manifest.doubles("image_preprocessing.mean[]")
        let std = try manifest.doubles("image_preprocessing.std[]")
        let pad = try manifest.ints("image_preprocessing.pad_color[]")
        let plane = size * size
        let top = (size - 7) / 2
        for c in 0..<3 {
            let padValue = (Double(pad[c]) / 255 - mean[c]) / std[c]
            let redValue = ((c == 0 ? 1.0 : 0.0) - mean[c]) / std[c]
            func at(_ row: Int) -> Double { Double(values[c * plane + row * size + size / 2]) }
            XCTAssertEqual(at(top - 1), padValue, accuracy: 0.02, "last pad row above, channel \(c)")
            XCTAssertEqual(at(top), redValue, accuracy: 0.02, "first image row, channel \(c)")
            XCTAssertEqual(at(top + 6), redValue, accuracy: 0.02, "last image row, channel \(c)")
            XCTAssertEqual(at(top + 7), padValue, accuracy: 0.02, "first pad row below, channel \(c)")
        }
    }

    func testBatchesShuffleWholeEpochs() {
        let batches = Personalizer.batches(5, 2, 5, 7)
        XCTAssertEqual(batches.count, 5)
        XCTAssertTrue(batches.allSatisfy { $0.count == 2 })
        let order = batches.flatMap { $0 }
        XCTAssertEqual(Set(order.prefix(5)), Set(0..<5), "each epoch visits every sample once")
        XCTAssertEqual(Personalizer.batches(5, 2, 5, 7), batches, "the same seed gives the same order")
    }
}
