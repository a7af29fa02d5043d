import Foundation

/// One graph input: values (row-major) and shape.
public enum TensorData {
    case int64([Int64], shape: [Int])
    case float([Float], shape: [Int])

    public var shape: [Int] {
        switch self {
        case .int64(_, let shape), .float(_, let shape): return shape
        }
    }
}

/// The training runtime's calls, as `mobilepeft.export.ort.runtime.OrtTrainer` names them on the
/// desktop (ORT's `ORTTrainingSession` on the phone, `OrtTrainingSession.swift`), so the loop in
/// `Personalizer` does not depend on ONNX Runtime. Inputs are positional, in the order of
/// `trainInputNames` / `evalInputNames`.
public protocol TrainingSession: AnyObject {
    var trainInputNames: [String] { get }
    var evalInputNames: [String] { get }
    /// Forward and backward on one batch; the loss. Gradients wait for `optimizerStep`.
    func trainStep(_ inputs: [TensorData]) throws -> Float
    func optimizerStep() throws
    func lazyResetGrad() throws
    /// The eval model's loss on one batch (no gradients).
    func evalLoss(_ inputs: [TensorData]) throws -> Float
    func setLearningRate(_ learningRate: Float) throws
    /// An opaque copy of the trainable parameters (ORT: `toBuffer(withTrainable: true)`).
    func snapshotTrainable() throws -> AnyObject
    /// Puts a snapshot back (ORT: `fromBuffer(withValue:)`).
    func restoreTrainable(_ snapshot: AnyObject) throws
    /// The trainable parameters as one float32 buffer, in the runtime's parameter order.
    func trainableValues() throws -> [Float]
    /// Writes the checkpoint (parameters, no optimizer state) to `url`.
    func saveCheckpoint(to url: URL) throws
    /// Writes an inference model with the current weights and `outputs` as its outputs.
    func exportInferenceModel(to url: URL, outputs: [String]) throws
}

/// The frozen vision encoder on the training runtime: one image's pixels -> its image input
/// (`[P, D]` flattened), what the training graph takes for a row.
public protocol ImageEncoder: AnyObject {
    func encode(_ pixels: [Float]) throws -> [Float]
}

/// A `--train-layers` bundle's frozen decoder layers (`onnx_training.split.file`) on the inference
/// runtime: one sample's inputs (the names in `split.inputs`) -> the hidden states the training graph
/// takes, `[1, seq_len, hidden]` flattened. Each sample goes through it once, before training.
public protocol DecoderPrefix: AnyObject {
    func hiddenStates(_ inputs: [String: TensorData]) throws -> [Float]
}
