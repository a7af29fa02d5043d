import Foundation
import onnxruntime_training_objc

/// The bundle's frozen vision encoder (`onnx_training.vision_encoder`) as an ORT inference
/// session: one image's pixels `[1,3,S,S]` -> its image input `[1,P,D]`.
public final class OrtVisionEncoder: ImageEncoder {
    private let session: ORTSession
    private let inputName: String
    private let outputName: String
    private let size: Int

    public init(manifest: Manifest, threads: Int) throws {
        let file = try manifest.directory.appendingPathComponent(manifest.string("onnx_training.vision_encoder.file"))
        inputName = try manifest.string("onnx_training.vision_encoder.input.name")
        outputName = try manifest.string("onnx_training.vision_encoder.output.name")
        size = try manifest.int("image_preprocessing.size")
        do {
            session = try ORTSession(env: OrtValues.environment(), modelPath: file.path,
                                     sessionOptions: OrtValues.sessionOptions(threads: threads))
        } catch {
            throw MobilePEFTError("ONNX Runtime cannot load the vision encoder \(file.lastPathComponent) (\(error.localizedDescription)); re-export the bundle")
        }
    }

    public func encode(_ pixels: [Float]) throws -> [Float] {
        let input = TensorData.float(pixels, shape: [1, 3, size, size])
        let outputs = try OrtValues.withValues([input]) { values in
            try session.run(withInputs: [inputName: values[0]], outputNames: [outputName], runOptions: nil)
        }
        guard let tokens = outputs[outputName] else { throw MobilePEFTError("the vision encoder returned no \(outputName)") }
        return try OrtValues.floats(tokens, what: outputName)
    }
}

/// A `--train-layers` bundle's frozen decoder layers (`onnx_training.split.file`) as an ORT inference
/// session: one sample's inputs -> hidden states `[1, seq_len, hidden]`. Over 2 GB its weights are
/// external data (`split.data_file`) beside it, which ORT reads from the model's folder: the app
/// passes the path, never the bytes.
public final class OrtDecoderPrefix: DecoderPrefix {
    private let session: ORTSession
    private let inputNames: [String]
    private let outputName: String

    public init(manifest: Manifest, threads: Int) throws {
        let file = try manifest.directory.appendingPathComponent(manifest.string("onnx_training.split.file"))
        outputName = try manifest.string("onnx_training.split.output.name")
        do {
            let session = try ORTSession(env: OrtValues.environment(), modelPath: file.path,
                                         sessionOptions: OrtValues.sessionOptions(threads: threads))
            inputNames = try session.inputNames()
            self.session = session
        } catch {
            throw MobilePEFTError("ONNX Runtime cannot load the frozen layers \(file.lastPathComponent) (\(error.localizedDescription)); copy the bundle again or re-export it")
        }
    }

    public func hiddenStates(_ inputs: [String: TensorData]) throws -> [Float] {
        let tensors = try inputNames.map { name -> TensorData in
            guard let value = inputs[name] else { throw MobilePEFTError("the frozen layers take \(name), which the sample lacks") }
            return value
        }
        let outputs = try OrtValues.withValues(tensors) { values in
            try session.run(withInputs: Dictionary(uniqueKeysWithValues: zip(inputNames, values)),
                            outputNames: [outputName], runOptions: nil)
        }
        guard let hidden = outputs[outputName] else { throw MobilePEFTError("the frozen layers returned no \(outputName)") }
        return try OrtValues.floats(hidden, what: outputName)
    }
}

/// Greedy answers from an inference model exported from the training session
/// (`exportInferenceModel`, outputs `onnx_training.inference_outputs`): the whole padded
/// `seq_len` row is recomputed for every new token (the model has no KV cache), which is
/// plenty for showing before/after answers. A `--train-layers` bundle's model holds only the top
/// layers: each step runs the frozen layers first and feeds it their hidden states.
public final class OrtAnswerer {
    private let session: ORTSession
    private let template: ConversationTemplate
    private let layout: TrainingBatchLayout
    private let inputNames: [String]
    private let logitsName: String
    private let prefix: DecoderPrefix?

    public init(model: URL, manifest: Manifest, template: ConversationTemplate, threads: Int) throws {
        layout = try TrainingBatchLayout(manifest: manifest)
        prefix = try manifest.has("onnx_training.split") ? OrtDecoderPrefix(manifest: manifest, threads: threads) : nil
        logitsName = try manifest.string("onnx_training.inference_outputs[]", 0)
        self.template = template
        do {
            let session = try ORTSession(env: OrtValues.environment(), modelPath: model.path,
                                         sessionOptions: OrtValues.sessionOptions(threads: threads))
            inputNames = try session.inputNames()
            self.session = session
        } catch {
            throw MobilePEFTError("ONNX Runtime cannot load \(model.lastPathComponent) (\(error.localizedDescription))")
        }
    }

    /// The model's answer to `question` (`imageTokens`: the encoded photo, or nil), at most
    /// `maxNewTokens` tokens, stopped at EOS or the template's stop string.
    public func answer(_ question: String, imageTokens: [Float]?, maxNewTokens: Int = 48) throws -> String {
        let asked = imageTokens == nil ? question : template.withImage(question)
        var ids = template.widen(try template.promptIds(question: asked))
        var generated: [Int] = []
        while generated.count < maxNewTokens, ids.count < layout.seqLen {
            let token = try nextToken(ids, imageTokens: imageTokens)
            if token == template.eosId { break }
            ids.append(token)
            generated.append(token)
        }
        let text = template.tokenizer.decode(generated)
        let answer = TextSplit.split(text, on: template.stop).first ?? text
        return TextSplit.pythonStrip(answer)
    }

    private func nextToken(_ ids: [Int], imageTokens: [Float]?) throws -> Int {
        let n = ids.count, seqLen = layout.seqLen
        let padded = ids.map { Int64($0) } + [Int64](repeating: Int64(template.padId), count: seqLen - n)
        let mask = [Int64](repeating: 1, count: n) + [Int64](repeating: 0, count: seqLen - n)
        let row = EncodedRow(inputIds: padded, attentionMask: mask,
                             labels: [Int64](repeating: Int64(template.ignoreIndex), count: seqLen),
                             hasImage: imageTokens != nil, ignoreIndex: Int64(template.ignoreIndex))
        var named = try layout.inputs([row], images: [imageTokens])
        if let prefix {
            named = try layout.splitInputs([row], hidden: [try prefix.hiddenStates(named)])
        }
        // Exported models keep only the inputs their outputs need (labels usually go).
        let names = inputNames
        let tensors = try layout.ordered(named, as: names)
        let outputs = try OrtValues.withValues(tensors) { values in
            try session.run(withInputs: Dictionary(uniqueKeysWithValues: zip(names, values)),
                            outputNames: [logitsName], runOptions: nil)
        }
        guard let logits = outputs[logitsName] else { throw MobilePEFTError("the inference model returned no \(logitsName)") }
        let shape = try OrtValues.shape(logits)
        guard let vocab = shape.last, vocab > 0 else { throw MobilePEFTError("logits of shape \(shape)") }
        let values = try OrtValues.floats(logits, what: logitsName)
        guard values.count >= n * vocab else { throw MobilePEFTError("logits of shape \(shape) for \(seqLen) positions") }
        return values.withUnsafeBufferPointer { Argmax.row($0, start: (n - 1) * vocab, stride: 1, width: vocab) }
    }
}
