import Foundation
import onnxruntime_training_objc

/// `TrainingSession` on ONNX Runtime's Objective-C training API (pod onnxruntime-training-objc
/// 1.19.2), over the bundle's artifacts (manifest `onnx_training`): the calls
/// `mobilepeft.export.ort.runtime.OrtTrainer` makes on the desktop.
///
/// The checkpoint must outlive the session, so the session keeps it. `exportModelForInference`
/// re-reads the eval model from its path, so the bundle must stay readable while training.
public final class OrtTrainingSession: TrainingSession {
    public let trainInputNames: [String]
    public let evalInputNames: [String]

    private let checkpoint: ORTCheckpoint
    private let session: ORTTrainingSession

    /// `checkpointURL`: continue from an earlier session's checkpoint instead of the bundle's.
    public init(manifest: Manifest, checkpointURL: URL? = nil, threads: Int, seed: Int64 = 0) throws {
        guard manifest.has("onnx_training") else {
            throw MobilePEFTError("\(Manifest.fileName) has no onnx_training section: export the bundle with `mobilepeft export onnx-training` to personalise on the phone")
        }
        let train = try manifest.directory.appendingPathComponent(manifest.string("onnx_training.training_model"))
        let eval = try manifest.directory.appendingPathComponent(manifest.string("onnx_training.eval_model"))
        let optimizer = try manifest.directory.appendingPathComponent(manifest.string("onnx_training.optimizer_model"))
        let start = try checkpointURL ?? manifest.directory.appendingPathComponent(manifest.string("onnx_training.checkpoint"))
        guard FileManager.default.fileExists(atPath: start.path) else {
            throw MobilePEFTError("ORT checkpoint not found: \(start.path)")
        }
        let env = try OrtValues.environment()
        ORTSetSeed(seed)  // LoRA dropout draws from ORT's generator
        let options = try OrtValues.sessionOptions(threads: threads)
        let state: ORTCheckpoint
        do {
            state = try ORTCheckpoint(path: start.path)
        } catch {
            throw MobilePEFTError("cannot read the ORT checkpoint \(start.lastPathComponent) (\(error.localizedDescription)); the file is corrupt or not an ORT training checkpoint, copy it again")
        }
        do {
            let session = try ORTTrainingSession(env: env, sessionOptions: options, checkpoint: state,
                                                 trainModelPath: train.path, evalModelPath: eval.path,
                                                 optimizerModelPath: optimizer.path)
            trainInputNames = try session.getTrainInputNames()
            evalInputNames = try session.getEvalInputNames()
            self.session = session
            self.checkpoint = state
        } catch {
            throw MobilePEFTError("ONNX Runtime cannot load the training artifacts in \(manifest.directory.lastPathComponent) (\(error.localizedDescription)); re-export the bundle")
        }
    }

    public func trainStep(_ inputs: [TensorData]) throws -> Float {
        let outputs = try OrtValues.withValues(inputs) { try session.trainStep(withInputValues: $0) }
        return try OrtTrainingSession.loss(outputs)
    }

    public func optimizerStep() throws {
        try session.optimizerStep()
    }

    public func lazyResetGrad() throws {
        try session.lazyResetGrad()
    }

    public func evalLoss(_ inputs: [TensorData]) throws -> Float {
        let outputs = try OrtValues.withValues(inputs) { try session.evalStep(withInputValues: $0) }
        return try OrtTrainingSession.loss(outputs)
    }

    public func setLearningRate(_ learningRate: Float) throws {
        try session.setLearningRate(learningRate)
    }

    public func snapshotTrainable() throws -> AnyObject {
        try session.toBuffer(withTrainable: true)
    }

    public func restoreTrainable(_ snapshot: AnyObject) throws {
        guard let buffer = snapshot as? ORTValue else { throw MobilePEFTError("not a snapshot of this session") }
        try session.fromBuffer(withValue: buffer)
    }

    public func trainableValues() throws -> [Float] {
        try OrtValues.floats(try session.toBuffer(withTrainable: true), what: "the trainable parameters")
    }

    public func saveCheckpoint(to url: URL) throws {
        try checkpoint.saveCheckpoint(toPath: url.path, withOptimizerState: false)
    }

    public func exportInferenceModel(to url: URL, outputs: [String]) throws {
        try session.exportModelForInference(withOutputPath: url.path, graphOutputNames: outputs)
    }

    /// The loss: the first output, a float32 scalar.
    private static func loss(_ outputs: [ORTValue]) throws -> Float {
        guard let first = outputs.first else { throw MobilePEFTError("the training model returned no loss") }
        guard let loss = try OrtValues.floats(first, what: "the loss").first else {
            throw MobilePEFTError("the training model returned an empty loss")
        }
        return loss
    }
}

/// Opens everything personalisation needs from a bundle: tokenizer and template, the vision
/// encoder, (a `--train-layers` bundle) its frozen decoder layers, the training session and the loop
/// around them. The frozen layers and the session open only when the loop needs them, one after the
/// other (docs/on-device-training.md, "Memory").
public enum OrtPersonalizer {
    /// `availableMB`: the memory the session may use (`DeviceInfo.availableMegabytes()`); a session the
    /// exporter's estimate says would not fit with `batchSize` is refused before anything loads.
    public static func open(manifest: Manifest, checkpointURL: URL? = nil, batchSize: Int,
                            availableMB: Double = DeviceInfo.availableMegabytes(),
                            threads: Int = DeviceInfo.performanceCores) throws -> Personalizer {
        try MemoryEstimate(manifest: manifest).check(batchSize: batchSize, availableMB: availableMB)
        let tokenizer = try SentencePieceTokenizer(
            contentsOf: manifest.directory.appendingPathComponent(manifest.string("tokenizer.file")))
        let ignoreIndex = try manifest.has("onnx_training.ignore_index") ? manifest.int("onnx_training.ignore_index") : -100
        let template = try ConversationTemplate(manifest: manifest, tokenizer: tokenizer, ignoreIndex: ignoreIndex)
        let encoder = try OrtVisionEncoder(manifest: manifest, threads: threads)
        let openPrefix: (() throws -> DecoderPrefix)? = manifest.has("onnx_training.split")
            ? { try OrtDecoderPrefix(manifest: manifest, threads: threads) } : nil
        return try Personalizer(openSession: { try OrtTrainingSession(manifest: manifest, checkpointURL: checkpointURL, threads: threads) },
                                encoder: encoder, openPrefix: openPrefix, template: template, manifest: manifest)
    }
}
