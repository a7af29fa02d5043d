import CoreGraphics
import Foundation
import MobilePEFTCore
import XCTest

/// The pure logic of MobilePEFTCore against what mobilepeft's Python code computes: tokenizer
/// ids, prompts and training rows from Fixtures/core_cases.json (written by
/// Fixtures/make_fixtures.py from `Tokenizer`, `build_prompt_ids` and `encode_sample`), plus
/// the manifest reader, statistics, image preprocessing and batching.
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
