import CryptoKit
import Foundation

/// The phone's writer of the deployed model's adapter file (docs/on-device-loop.md): after ONNX
/// Runtime training, the trained tensors go into a new `adapter.ptd` for an ExecuTorch bundle
/// exported with `--adapter-as-data`, which its runner swaps in without reloading the model.
///
/// Every adapter file of one bundle shares the bundle file's head (FlatTensor names, shapes,
/// offsets), so the writer copies that head, checked against the manifest's `head_sha256`, and
/// puts each trained tensor at the offset `executorch.adapter.tensors[]` states, transposed where
/// it says `transposed` (A^T `[in, r]`, B^T `[r, out]`). No FlatBuffers library is needed; the
/// Kotlin core, the native runner and `mobilepeft adapter to-ptd` write the same bytes.
public enum AdapterFile {
    struct Slot {
        let key: String
        let adapterKey: String
        let shape: [Int]
        let transposed: Bool
        let offset: Int
    }

    /// The new file's bytes: `executorchBundle`'s adapter file with the tensors of `trainable`, the
    /// ORT trainable buffer (`Personalizer.session().trainableValues()`: the parameters in
    /// `onnx_training.trainable[]` order, each `[rows, cols]` row-major) of `ortBundle`. An ORT bundle
    /// exported with `--train-layers` trains only the top layers: the tensors of the layers below
    /// (`onnx_training.split.frozen_layers`) keep the template's values.
    public static func bytes(executorchBundle: Manifest, ortBundle: Manifest, trainable: [Float]) throws -> Data {
        guard executorchBundle.has("executorch.adapter") else {
            throw MobilePEFTError("\(Manifest.fileName) in \(executorchBundle.directory.path) has its adapter merged; export it with `mobilepeft export executorch --adapter-as-data`")
        }
        let format = try executorchBundle.string("executorch.adapter.format")
        guard format == "executorch_flat_tensor" else {
            throw MobilePEFTError("\(Manifest.fileName): executorch.adapter.format is \"\(format)\"; this app writes executorch_flat_tensor")
        }
        let templateURL = executorchBundle.directory.appendingPathComponent(try executorchBundle.string("executorch.adapter.file"))
        let template = try Data(contentsOf: templateURL)
        let total = try executorchBundle.int("executorch.adapter.bytes")
        let headBytes = try executorchBundle.int("executorch.adapter.head_bytes")
        guard template.count == total else {
            throw MobilePEFTError("\(templateURL.path): \(template.count) bytes, \(Manifest.fileName) says \(total) (copied incompletely?)")
        }
        let head = template.prefix(headBytes)
        let digest = SHA256.hash(data: head).map { String(format: "%02x", $0) }.joined()
        guard digest == (try executorchBundle.string("executorch.adapter.head_sha256")) else {
            throw MobilePEFTError("\(templateURL.path): its head differs from the one \(Manifest.fileName) records; re-export the bundle")
        }

        var trained: [String: (shape: [Int], values: ArraySlice<Float>)] = [:]
        var at = 0
        for i in 0..<(try ortBundle.count("onnx_training.trainable[]")) {
            let shape = try ortBundle.ints("onnx_training.trainable[].shape", i)
            let n = shape.reduce(1, *)
            guard at + n <= trainable.count else {
                throw MobilePEFTError("the trainable buffer holds \(trainable.count) values, fewer than \(Manifest.fileName) onnx_training.trainable[] lists")
            }
            trained[try ortBundle.string("onnx_training.trainable[].adapter_key", i)] = (shape, trainable[at..<(at + n)])
            at += n
        }
        guard at == trainable.count else {
            throw MobilePEFTError("the trainable buffer holds \(trainable.count) values, \(Manifest.fileName) onnx_training.trainable[] lists \(at)")
        }

        let frozenLayers = try frozenLayerCount(ortBundle)
        var out = template
        var placed = Set<String>()
        for i in 0..<(try executorchBundle.count("executorch.adapter.tensors[]")) {
            let slot = try Slot(key: executorchBundle.string("executorch.adapter.tensors[].key", i),
                                adapterKey: executorchBundle.string("executorch.adapter.tensors[].adapter_key", i),
                                shape: executorchBundle.ints("executorch.adapter.tensors[].shape", i),
                                transposed: executorchBundle.bool("executorch.adapter.tensors[].transposed", i),
                                offset: executorchBundle.int("executorch.adapter.tensors[].offset", i))
            guard try executorchBundle.string("executorch.adapter.tensors[].dtype", i) == "float32" else {
                throw MobilePEFTError("\(Manifest.fileName): adapter tensor '\(slot.key)' is not float32; this app writes float32")
            }
            if trained[slot.adapterKey] == nil, (0..<frozenLayers).contains(decoderLayer(slot.adapterKey)) {
                continue  // below the layers the phone trains: the bundle's own values stay
            }
            guard let source = trained[slot.adapterKey] else {
                throw MobilePEFTError("no trained tensor '\(slot.adapterKey)' for adapter tensor '\(slot.key)'; train with the ONNX Runtime bundle exported from this bundle's adapter")
            }
            let stored = slot.transposed ? source.shape.reversed() : source.shape
            guard source.shape.count == 2, Array(stored) == slot.shape else {
                throw MobilePEFTError("trained tensor '\(slot.adapterKey)' has shape \(source.shape); the bundle stores '\(slot.key)' as \(slot.shape)\(slot.transposed ? " (transposed)" : ""): another rank?")
            }
            let rows = source.shape[0], cols = source.shape[1], base = source.values.startIndex
            var values = [Float](repeating: 0, count: rows * cols)
            for r in 0..<rows {
                for c in 0..<cols {
                    values[slot.transposed ? c * rows + r : r * cols + c] = source.values[base + r * cols + c]
                }
            }
            let raw = values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
            guard slot.offset >= headBytes, slot.offset + raw.count <= total else {
                throw MobilePEFTError("\(Manifest.fileName): adapter tensor '\(slot.key)' lies outside the \(total)-byte file")
            }
            out.replaceSubrange(slot.offset..<(slot.offset + raw.count), with: raw)
            placed.insert(slot.adapterKey)
        }
        if let unknown = Set(trained.keys).subtracting(placed).sorted().first {
            throw MobilePEFTError("trained tensor '\(unknown)' has no place in the bundle's adapter file (the ONNX Runtime bundle was exported from another adapter, or trains the projector)")
        }
        return out
    }

    /// The decoder layer a PEFT tensor name belongs to (`...layers.7.self_attn...` -> 7), or -1.
    static func decoderLayer(_ adapterKey: String) -> Int {
        guard let range = adapterKey.range(of: #"\.layers\.[0-9]+\."#, options: .regularExpression) else { return -1 }
        return Int(adapterKey[range].dropFirst(".layers.".count).dropLast()) ?? -1
    }

    /// How many decoder layers at the bottom an ORT bundle leaves frozen (`--train-layers`), 0 otherwise.
    static func frozenLayerCount(_ ortBundle: Manifest) throws -> Int {
        try ortBundle.has("onnx_training.split") ? ortBundle.int("onnx_training.split.frozen_layers") : 0
    }

    /// Whether `executorchBundle` keeps as data the adapter `ortBundle` trains, so a file can be written
    /// for it: every trained tensor has its place, and every other one lies in the layers a `--train-layers`
    /// bundle leaves frozen. An ORT bundle that also trains the projector does not fit: the ExecuTorch
    /// bundle holds the projector merged.
    public static func fits(executorchBundle: Manifest, ortBundle: Manifest) throws -> Bool {
        guard executorchBundle.has("executorch.adapter") else { return false }
        let stored = try Set((0..<executorchBundle.count("executorch.adapter.tensors[]")).map {
            try executorchBundle.string("executorch.adapter.tensors[].adapter_key", $0)
        })
        let trained = try Set((0..<ortBundle.count("onnx_training.trainable[]")).map {
            try ortBundle.string("onnx_training.trainable[].adapter_key", $0)
        })
        let frozenLayers = try frozenLayerCount(ortBundle)
        return trained.isSubset(of: stored)
            && stored.subtracting(trained).allSatisfy { (0..<frozenLayers).contains(decoderLayer($0)) }
    }

    /// Writes the personalized adapter file atomically: the previous file stays until this one is whole.
    public static func write(executorchBundle: Manifest, ortBundle: Manifest, trainable: [Float], to url: URL) throws {
        let data = try bytes(executorchBundle: executorchBundle, ortBundle: ortBundle, trainable: trainable)
        try AtomicFiles.replace(url, sidecarSuffix: nil) { try data.write(to: $0) }
    }
}
