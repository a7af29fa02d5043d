import CoreML
import Foundation

/// The bundle's two Core ML packages (manifest `coreml`), driven as mobilepeft/export/bench.py
/// `_load_coreml` drives them on a Mac:
///
/// * VisionEncoder: `pixel_values [1,3,S,S]` -> `image_embeds [1,P,D]`;
/// * TextDecoder, token embedding inside: `(input_ids [1,T] int32, image_embeds [1,P,D],
///   cache_position [T] int32) -> logits [1,T,V]`, where an id equal to `prompt.image_token_id`
///   takes the next image token. Prefill passes P image ids then the prompt; each step one token,
///   with the same image_embeds.
///
/// The KV cache: iOS 18 packages keep it as Core ML state (`makeState()` once per conversation,
/// `prediction(from:using:)`); iOS 17 packages take `k_cache`/`v_cache` inputs and return them
/// updated as `k_cache_out`/`v_cache_out`, fed back on the next call. Input and output names
/// come from the manifest; packages are compiled on the phone (`MLModel.compileModel(at:)`,
/// counted in the load time, as coremltools compiles on load on the host) with the compute units
/// the manifest advises per package.
public final class CoreMLEngine: InferenceEngine {
    public let runtime = "coreml"
    public let backend = "coreml"
    public let quantization: String
    /// Core ML schedules its own threads; reported as the core count.
    public var threads: Int { DeviceInfo.cores }

    private struct Port {
        let name: String
        let dtype: String
        let shape: [Int]
    }

    private let visionPackage: URL
    private let decoderPackage: URL
    private let visionUnits: MLComputeUnits
    private let decoderUnits: MLComputeUnits
    private let stateful: Bool
    private let imageTokenId: Int32
    private let maxTokensPerCall: Int?
    private let pixelInput: Port
    private let imageOutput: String
    private let idsInput: String
    private let imageInput: Port
    private let positionInput: String
    private let logitsOutput: String
    /// iOS 17 packages: (input, output) names of the two caches and their shape.
    private let caches: [(input: String, output: String)]
    private let cacheShape: [Int]

    private var vision: MLModel?
    private var decoder: MLModel?
    private var compiled: [URL] = []
    private var image: MLMultiArray?
    private var state: AnyObject?
    private var cacheValues: [MLMultiArray] = []

    public init(manifest: Manifest) throws {
        guard manifest.has("coreml") else {
            throw MobilePEFTError("\(Manifest.fileName) has no coreml section: this bundle has no Core ML packages (export them with `mobilepeft export coreml`)")
        }
        quantization = try manifest.string("coreml.compression")
        let stateful = try manifest.bool("coreml.stateful_kv_cache")
        self.stateful = stateful
        imageTokenId = try Int32(manifest.int("prompt.image_token_id"))
        visionPackage = try manifest.directory.appendingPathComponent(manifest.string("coreml.vision_encoder.file"))
        decoderPackage = try manifest.directory.appendingPathComponent(manifest.string("coreml.text_decoder.file"))
        visionUnits = try CoreMLEngine.computeUnits(manifest.string("coreml.compute_units{}", "vision_encoder"))
        decoderUnits = try CoreMLEngine.computeUnits(manifest.string("coreml.compute_units{}", "text_decoder"))
        maxTokensPerCall = try manifest.has("coreml.text_decoder.max_tokens_per_call")
            ? manifest.int("coreml.text_decoder.max_tokens_per_call") : nil

        guard try manifest.count("coreml.vision_encoder.inputs[]") == 1,
              try manifest.count("coreml.vision_encoder.outputs[]") == 1 else {
            throw MobilePEFTError("\(Manifest.fileName): coreml.vision_encoder should have one input and one output")
        }
        pixelInput = try Port(name: manifest.string("coreml.vision_encoder.inputs[].name", 0),
                              dtype: manifest.string("coreml.vision_encoder.inputs[].dtype", 0),
                              shape: manifest.ints("coreml.vision_encoder.inputs[].shape[]", 0))
        imageOutput = try manifest.string("coreml.vision_encoder.outputs[].name", 0)

        // Decoder inputs in the exporter's order: ids, image embeddings, positions (+ caches).
        let inputCount = try manifest.count("coreml.text_decoder.inputs[]")
        let outputCount = try manifest.count("coreml.text_decoder.outputs[]")
        guard inputCount == (stateful ? 3 : 5), outputCount == (stateful ? 1 : 3) else {
            throw MobilePEFTError("\(Manifest.fileName): coreml.text_decoder has \(inputCount) inputs and \(outputCount) outputs; a \(stateful ? "stateful" : "stateless") decoder has \(stateful ? "3 and 1" : "5 and 3")")
        }
        let dtypes = try (0..<inputCount).map { try manifest.string("coreml.text_decoder.inputs[].dtype", $0) }
        guard dtypes[0] == "int32", dtypes[2] == "int32" else {
            throw MobilePEFTError("\(Manifest.fileName): coreml.text_decoder takes \(dtypes[0]) ids and \(dtypes[2]) positions; this app feeds int32")
        }
        idsInput = try manifest.string("coreml.text_decoder.inputs[].name", 0)
        imageInput = try Port(name: manifest.string("coreml.text_decoder.inputs[].name", 1), dtype: dtypes[1],
                              shape: manifest.ints("coreml.text_decoder.inputs[].shape[]", 1))
        positionInput = try manifest.string("coreml.text_decoder.inputs[].name", 2)
        logitsOutput = try manifest.string("coreml.text_decoder.outputs[].name", 0)
        if stateful {
            caches = []
            cacheShape = []
        } else {
            caches = try (0..<2).map { k in
                try (input: manifest.string("coreml.text_decoder.inputs[].name", 3 + k),
                     output: manifest.string("coreml.text_decoder.outputs[].name", 1 + k))
            }
            cacheShape = try manifest.ints("coreml.text_decoder.inputs[].shape[]", 3)
        }
    }

    deinit {
        for url in compiled {
            try? FileManager.default.removeItem(at: url)
        }
    }

    public func load() throws {
        if stateful {
            guard #available(iOS 18.0, macOS 15.0, *) else {
                throw MobilePEFTError("these Core ML packages keep the KV cache as state, which needs iOS 18; re-export with `mobilepeft export coreml --target iOS17` for iOS 17")
            }
        }
        vision = try compileAndLoad(visionPackage, units: visionUnits)
        decoder = try compileAndLoad(decoderPackage, units: decoderUnits)
    }

    public func encodeImage(_ pixels: [Float]) throws -> ImageTokens {
        guard let vision else { throw MobilePEFTError("the Core ML packages are not loaded") }
        let input = try MultiArrays.floats(pixels, shape: pixelInput.shape, dtype: pixelInput.dtype)
        let provider = try MLDictionaryFeatureProvider(dictionary: [pixelInput.name: MLFeatureValue(multiArray: input)])
        let output = try predict(vision, provider, state: nil, what: "VisionEncoder")
        guard let embeds = output.featureValue(for: imageOutput)?.multiArrayValue else {
            throw MobilePEFTError("VisionEncoder returned no \(imageOutput)")
        }
        let shape = embeds.shape.map(\.intValue)
        guard shape.count == 3 else { throw MobilePEFTError("VisionEncoder returned shape \(shape), expected [1, P, D]") }
        return ImageTokens(count: shape[1], dim: shape[2], values: try MultiArrays.floatValues(embeds))
    }

    public func prefill(imageTokens: ImageTokens, promptIds: [Int]) throws -> Int {
        guard let decoder else { throw MobilePEFTError("the Core ML packages are not loaded") }
        let ids = [Int32](repeating: imageTokenId, count: imageTokens.count) + promptIds.map { Int32($0) }
        if let maxTokensPerCall, ids.count > maxTokensPerCall {
            throw MobilePEFTError("a prefill of \(ids.count) tokens exceeds the decoder's \(maxTokensPerCall) tokens per call")
        }
        image = try MultiArrays.floats(imageTokens.values, shape: imageInput.shape, dtype: imageInput.dtype)
        if stateful {
            guard #available(iOS 18.0, macOS 15.0, *) else { throw MobilePEFTError("stateful Core ML needs iOS 18") }
            state = decoder.makeState()
        } else {
            cacheValues = try caches.map { _ in try MultiArrays.zeros(shape: cacheShape) }
        }
        return try decode(ids, start: 0)
    }

    public func step(token: Int, position: Int) throws -> Int {
        try decode([Int32(token)], start: position)
    }

    /// One decoder call over `ids` at positions `start...`; the greedy next token.
    private func decode(_ ids: [Int32], start: Int) throws -> Int {
        guard let decoder, let image else { throw MobilePEFTError("prefill a conversation before decoding") }
        let idsArray = try MultiArrays.int32(ids, shape: [1, ids.count])
        let positions = try MultiArrays.int32((0..<ids.count).map { Int32(start + $0) }, shape: [ids.count])
        var features: [String: Any] = [
            idsInput: MLFeatureValue(multiArray: idsArray),
            imageInput.name: MLFeatureValue(multiArray: image),
            positionInput: MLFeatureValue(multiArray: positions),
        ]
        for (cache, value) in zip(caches, cacheValues) {
            features[cache.input] = MLFeatureValue(multiArray: value)
        }
        let provider = try MLDictionaryFeatureProvider(dictionary: features)
        let output = try predict(decoder, provider, state: state, what: "TextDecoder")
        if !stateful {
            cacheValues = try caches.map { cache in
                guard let updated = output.featureValue(for: cache.output)?.multiArrayValue else {
                    throw MobilePEFTError("TextDecoder returned no \(cache.output)")
                }
                return updated
            }
        }
        guard let logits = output.featureValue(for: logitsOutput)?.multiArrayValue else {
            throw MobilePEFTError("TextDecoder returned no \(logitsOutput)")
        }
        return try MultiArrays.argmaxLastRow(logits)
    }

    private func predict(_ model: MLModel, _ input: MLFeatureProvider, state: AnyObject?,
                         what: String) throws -> MLFeatureProvider {
        do {
            if let state {
                guard #available(iOS 18.0, macOS 15.0, *) else { throw MobilePEFTError("stateful Core ML needs iOS 18") }
                guard let mlState = state as? MLState else { throw MobilePEFTError("the decoder state is not an MLState") }
                return try model.prediction(from: input, using: mlState)
            }
            return try model.prediction(from: input)
        } catch let error as MobilePEFTError {
            throw error
        } catch {
            throw MobilePEFTError("Core ML \(what) prediction failed (\(error.localizedDescription))")
        }
    }

    private func compileAndLoad(_ package: URL, units: MLComputeUnits) throws -> MLModel {
        do {
            let url = try MLModel.compileModel(at: package)
            compiled.append(url)
            let configuration = MLModelConfiguration()
            configuration.computeUnits = units
            return try MLModel(contentsOf: url, configuration: configuration)
        } catch {
            throw MobilePEFTError("Core ML cannot compile or load \(package.lastPathComponent) (\(error.localizedDescription))")
        }
    }

    private static func computeUnits(_ name: String) throws -> MLComputeUnits {
        switch name {
        case "all": return .all
        case "cpuAndGPU": return .cpuAndGPU
        case "cpuOnly": return .cpuOnly
        case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
        default: throw MobilePEFTError("\(Manifest.fileName): unknown Core ML compute units \"\(name)\"")
        }
    }
}
