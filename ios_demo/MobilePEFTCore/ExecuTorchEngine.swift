import ExecuTorch
import Foundation

/// The bundle's `.pte` on ExecuTorch's Swift API, in ExecuTorch's multimodal convention (manifest
/// `executorch.methods`): `vision_encoder` (pixels `[1,3,S,S]` float -> image tokens `[1,P,D]`),
/// `token_embedding` (ids `[1,T]` int64 -> `[1,T,D]`), `text_decoder` (embeddings `[1,T,D]`
/// float + cache_position `[T]` int64 -> logits `[1,T,V]`, static KV cache inside). Prefill puts
/// the image tokens in front of the prompt's embeddings, as mobilepeft/export/bench.py `_three_methods` does.
public final class ExecuTorchEngine: InferenceEngine {
    public let runtime = "executorch"
    public let backend: String
    public let quantization: String
    /// ExecuTorch's default thread pool (one thread per core); the Swift API cannot resize it.
    public var threads: Int { DeviceInfo.cores }

    private let path: String
    private let imageSize: Int
    private var module: Module?

    public init(manifest: Manifest) throws {
        guard manifest.has("executorch") else {
            throw MobilePEFTError("\(Manifest.fileName) has no executorch section: this bundle has no .pte (export one with `mobilepeft export executorch`)")
        }
        path = try manifest.directory.appendingPathComponent(manifest.string("executorch.file")).path
        backend = try manifest.string("executorch.backend")
        quantization = try manifest.string("executorch.quantization")
        imageSize = try manifest.int("image_preprocessing.size")
        let methods = try manifest.keys("executorch.methods{}")
        for method in ["vision_encoder", "token_embedding", "text_decoder"] where !methods.contains(method) {
            throw MobilePEFTError("\(Manifest.fileName): executorch.methods has no \(method); re-export the bundle")
        }
        // The dtypes this engine feeds: name, dtype, shape triples per method.
        let checks = try [
            ("vision_encoder", manifest.string("executorch.methods{}.input[]", "vision_encoder", 1), "float32"),
            ("token_embedding", manifest.string("executorch.methods{}.input[]", "token_embedding", 1), "int64"),
            ("text_decoder", manifest.string("executorch.methods{}.input[]", "text_decoder", 1), "float32"),
            ("text_decoder", manifest.string("executorch.methods{}.input[]", "text_decoder", 4), "int64"),
        ]
        for (method, found, want) in checks where found != want {
            throw MobilePEFTError("\(Manifest.fileName): executorch.methods{\(method)} takes \(found) where this app feeds \(want)")
        }
        guard FileManager.default.fileExists(atPath: path) else {
            throw MobilePEFTError("the ExecuTorch program \(path) is missing; copy the bundle again")
        }
    }

    public func load() throws {
        let module = Module(filePath: path)
        for method in ["vision_encoder", "token_embedding", "text_decoder"] {
            do {
                try module.load(method)
            } catch {
                throw MobilePEFTError("ExecuTorch cannot load \(method) from \((path as NSString).lastPathComponent) (\(error.localizedDescription)); a backend or kernel library the program needs may not be linked (backend \(backend))")
            }
        }
        self.module = module
    }

    public func encodeImage(_ pixels: [Float]) throws -> ImageTokens {
        let output = try run("vision_encoder", [Tensor<Float>(pixels, shape: [1, 3, imageSize, imageSize])])
        let shape = output.shape
        guard shape.count == 3 else { throw MobilePEFTError("vision_encoder returned shape \(shape), expected [1, P, D]") }
        return ImageTokens(count: shape[1], dim: shape[2], values: try output.withUnsafeBytes { Array($0) })
    }

    public func prefill(imageTokens: ImageTokens, promptIds: [Int]) throws -> Int {
        let text = try embed(promptIds)
        let length = imageTokens.count + promptIds.count
        let embeddings = Tensor<Float>(imageTokens.values + text, shape: [1, length, imageTokens.dim])
        return try decode(embeddings, positions: (0..<length).map { Int64($0) })
    }

    public func step(token: Int, position: Int) throws -> Int {
        let embedding = try embed([token])
        return try decode(Tensor<Float>(embedding, shape: [1, 1, embedding.count]), positions: [Int64(position)])
    }

    private func embed(_ ids: [Int]) throws -> [Float] {
        let output = try run("token_embedding", [Tensor<Int64>(ids.map { Int64($0) }, shape: [1, ids.count])])
        return try output.withUnsafeBytes { Array($0) }
    }

    private func decode(_ embeddings: Tensor<Float>, positions: [Int64]) throws -> Int {
        let logits = try run("text_decoder", [embeddings, Tensor<Int64>(positions, shape: [positions.count])])
        guard let vocab = logits.shape.last else { throw MobilePEFTError("text_decoder returned a scalar") }
        return try logits.withUnsafeBytes { try Argmax.lastRow($0, width: vocab) }
    }

    /// Runs `method` and returns its first output as a float tensor.
    private func run(_ method: String, _ inputs: [ValueConvertible]) throws -> Tensor<Float> {
        guard let module else { throw MobilePEFTError("the ExecuTorch program is not loaded") }
        let outputs: [Value]
        do {
            outputs = try module.execute(method, inputs)
        } catch {
            throw MobilePEFTError("ExecuTorch \(method) failed (\(error.localizedDescription))")
        }
        guard let tensor: Tensor<Float> = outputs.first?.tensor() else {
            throw MobilePEFTError("ExecuTorch \(method) returned no float32 tensor")
        }
        return tensor
    }
}
