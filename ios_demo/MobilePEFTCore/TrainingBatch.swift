import Foundation

/// The training graph's inputs for a batch of rows, as `mobilepeft.export.ort.batch.stack_batch`
/// builds them: ids and mask `[B, seq_len]` int64, the image input `[B, P, D]` float32 (zeros for
/// a row without a photo), labels flattened to `[B * seq_len]` int64; named as the manifest's
/// `onnx_training.inputs` and `label` say.
public struct TrainingBatchLayout {
    public let idsName: String
    public let maskName: String
    public let imageName: String
    public let labelName: String
    public let seqLen: Int
    /// One row's image input shape, `[P, D]` (vision encoder output without the batch axis).
    public let imageShape: [Int]
    /// A `--train-layers` bundle's training graph takes the frozen layers' output under this name
    /// (`onnx_training.split.output.name`), `[B, seq_len, splitHiddenSize]`, and the mask; nil otherwise.
    public let splitOutputName: String?
    public let splitHiddenSize: Int

    public init(manifest: Manifest) throws {
        guard try manifest.count("onnx_training.inputs[]") == 3 else {
            throw MobilePEFTError("\(Manifest.fileName): onnx_training.inputs should list input_ids, attention_mask and the image input")
        }
        let dtypes = try (0..<3).map { try manifest.string("onnx_training.inputs[].dtype", $0) }
        guard dtypes == ["int64", "int64", "float32"], try manifest.string("onnx_training.label.dtype") == "int64" else {
            throw MobilePEFTError("\(Manifest.fileName): onnx_training inputs have dtypes \(dtypes); this app feeds int64 ids, int64 mask, float32 image input and int64 labels")
        }
        idsName = try manifest.string("onnx_training.inputs[].name", 0)
        maskName = try manifest.string("onnx_training.inputs[].name", 1)
        imageName = try manifest.string("onnx_training.inputs[].name", 2)
        labelName = try manifest.string("onnx_training.label.name")
        let imageInput = try manifest.string("onnx_training.image_input")
        guard imageInput == imageName else {
            throw MobilePEFTError("\(Manifest.fileName): onnx_training.image_input is \(imageInput) but the third input is \(imageName)")
        }
        seqLen = try manifest.int("max_seq_len")
        // Output shape ["batch", P, D]: skip the batch axis (a string).
        let rank = try manifest.count("onnx_training.vision_encoder.output.shape[]")
        imageShape = try (1..<max(rank, 1)).map { try manifest.int("onnx_training.vision_encoder.output.shape[]", $0) }
        if manifest.has("onnx_training.split") {
            splitOutputName = try manifest.string("onnx_training.split.output.name")
            splitHiddenSize = try manifest.int("onnx_training.split.hidden_size")
            let graphInputs = try (0..<manifest.count("onnx_training.split.graph_inputs[]")).map {
                try manifest.string("onnx_training.split.graph_inputs[].name", $0)
            }
            guard Set(graphInputs) == [splitOutputName!, maskName] else {
                throw MobilePEFTError("\(Manifest.fileName): onnx_training.split.graph_inputs are \(graphInputs); this app feeds \(splitOutputName!) and \(maskName)")
            }
        } else {
            splitOutputName = nil
            splitHiddenSize = 0
        }
    }

    public var imageValueCount: Int { imageShape.reduce(1, *) }

    /// Named inputs for `rows`; `images[i]` is row i's encoded photo or nil.
    public func inputs(_ rows: [EncodedRow], images: [[Float]?]) throws -> [String: TensorData] {
        guard rows.count == images.count else { throw MobilePEFTError("\(rows.count) rows but \(images.count) images") }
        var imageValues: [Float] = []
        imageValues.reserveCapacity(rows.count * imageValueCount)
        for image in images {
            if let image {
                guard image.count == imageValueCount else {
                    throw MobilePEFTError("the vision encoder gave \(image.count) values per image, the manifest says \(imageShape)")
                }
                imageValues += image
            } else {
                imageValues += [Float](repeating: 0, count: imageValueCount)
            }
        }
        let b = rows.count
        return [
            idsName: .int64(rows.flatMap(\.inputIds), shape: [b, seqLen]),
            maskName: .int64(rows.flatMap(\.attentionMask), shape: [b, seqLen]),
            imageName: .float(imageValues, shape: [b] + imageShape),
            labelName: .int64(rows.flatMap(\.labels), shape: [b * seqLen]),
        ]
    }

    /// A `--train-layers` bundle's training inputs for `rows`: each row's hidden states from the frozen
    /// layers (computed once per sample), the attention mask and the labels.
    public func splitInputs(_ rows: [EncodedRow], hidden: [[Float]]) throws -> [String: TensorData] {
        guard let splitOutputName else { throw MobilePEFTError("this bundle trains the whole decoder: use inputs(_:images:)") }
        guard rows.count == hidden.count else { throw MobilePEFTError("\(rows.count) rows but \(hidden.count) hidden states") }
        let per = seqLen * splitHiddenSize
        var values: [Float] = []
        values.reserveCapacity(rows.count * per)
        for (i, h) in hidden.enumerated() {
            guard h.count == per else {
                throw MobilePEFTError("the frozen layers gave \(h.count) values for row \(i + 1), the training graph takes \(seqLen) x \(splitHiddenSize)")
            }
            values += h
        }
        let b = rows.count
        return [
            splitOutputName: .float(values, shape: [b, seqLen, splitHiddenSize]),
            maskName: .int64(rows.flatMap(\.attentionMask), shape: [b, seqLen]),
            labelName: .int64(rows.flatMap(\.labels), shape: [b * seqLen]),
        ]
    }

    /// `named` in the order a session takes its inputs.
    public func ordered(_ named: [String: TensorData], as names: [String]) throws -> [TensorData] {
        try names.map { name in
            guard let value = named[name] else {
                throw MobilePEFTError("the training model takes an input \(name) the manifest does not describe (it has \(named.keys.sorted()))")
            }
            return value
        }
    }
}
