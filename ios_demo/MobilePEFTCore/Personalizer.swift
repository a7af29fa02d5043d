import Foundation

/// One thing the user taught the model: an optional photo (preprocessed pixels) and the
/// conversation about it.
public struct PersonalSample {
    public let pixels: [Float]?
    public let turns: [ConversationTurn]

    public init(pixels: [Float]?, turns: [ConversationTurn]) {
        self.pixels = pixels
        self.turns = turns
    }
}

public struct PersonalizeSettings {
    public var steps = 20
    /// When set, as many steps as `epochs` passes over the samples take (overrides `steps`).
    public var epochs: Int?
    public var batchSize = 4
    /// nil: the manifest's `onnx_training.optimizer.default_learning_rate`.
    public var learningRate: Double?
    public var seed: UInt64 = 0

    public init(steps: Int = 20, epochs: Int? = nil, batchSize: Int = 4, learningRate: Double? = nil, seed: UInt64 = 0) {
        self.steps = steps
        self.epochs = epochs
        self.batchSize = batchSize
        self.learningRate = learningRate
        self.seed = seed
    }
}

public struct TrainingProgress {
    public let step: Int
    public let totalSteps: Int
    public let epoch: Int
    public let loss: Float
    public let stepMs: Double
}

/// What a session did (`personalize.json`, the desktop's `PersonalizeReport` fields where they exist).
public struct PersonalizeReport: Codable {
    public var steps: Int
    public var batchSize: Int
    public var learningRate: Double
    public var samples: Int
    public var evalLossBefore: Double
    public var evalLossAfter: Double
    public var trainLosses: [Double]
    public var stepTimesMs: [Double]
    /// Why training stopped before `plannedSteps` (a non-finite loss, a cancel), or nil.
    public var stoppedEarly: String?
    public var plannedSteps: Int
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case steps, samples, seconds
        case batchSize = "batch_size", learningRate = "learning_rate", evalLossBefore = "eval_loss_before"
        case evalLossAfter = "eval_loss_after", trainLosses = "train_losses", stepTimesMs = "step_times_ms"
        case stoppedEarly = "stopped_early", plannedSteps = "planned_steps"
    }
}

/// The phone's training loop, as `mobilepeft personalize` (mobilepeft/export/ort/personalize.py) replays it on
/// the desktop: conversations through the bundle's template, photos through the bundle's vision
/// encoder (each once), epoch-wise shuffled batches (seeded), `trainStep` + `optimizerStep` +
/// `lazyResetGrad` per step, token-weighted eval loss before and after.
///
/// A non-finite loss stops training before its update is applied, and the trainable weights
/// go back to the last ones that gave a finite loss (a snapshot taken before each update), so
/// what is saved is never a diverged adapter.
public final class Personalizer {
    public let session: TrainingSession
    public let encoder: ImageEncoder
    public let template: ConversationTemplate
    public let layout: TrainingBatchLayout
    public let defaultLearningRate: Double
    public let inferenceOutputs: [String]
    /// Floats the trainable buffer must hold: the manifest's trainable shapes summed.
    public let trainableCount: Int

    private var encoded: [Int: [Float]] = [:]

    public init(session: TrainingSession, encoder: ImageEncoder, template: ConversationTemplate,
                manifest: Manifest) throws {
        self.session = session
        self.encoder = encoder
        self.template = template
        self.layout = try TrainingBatchLayout(manifest: manifest)
        self.defaultLearningRate = try manifest.double("onnx_training.optimizer.default_learning_rate")
        self.inferenceOutputs = try manifest.strings("onnx_training.inference_outputs[]")
        let trainable = try manifest.count("onnx_training.trainable[]")
        self.trainableCount = try (0..<trainable).reduce(0) { total, i in
            try total + manifest.ints("onnx_training.trainable[].shape[]", i).reduce(1, *)
        }
    }

    /// Rows of `samples`, each `seq_len` long (a first question too long for it is an error).
    public func rows(_ samples: [PersonalSample]) throws -> [EncodedRow] {
        try samples.enumerated().map { i, sample in
            do {
                return try template.encodeRow(sample.turns, seqLen: layout.seqLen)
            } catch let error as MobilePEFTError {
                throw MobilePEFTError("sample \(i + 1): \(error.message)")
            }
        }
    }

    public func train(_ samples: [PersonalSample], settings: PersonalizeSettings,
                      progress: ((TrainingProgress) -> Void)? = nil,
                      isCancelled: () -> Bool = { false }) throws -> PersonalizeReport {
        let started = Date()
        guard !samples.isEmpty else { throw MobilePEFTError("add at least one photo or question to train on") }
        guard settings.batchSize >= 1, settings.steps >= 1, (settings.epochs ?? 1) >= 1 else {
            throw MobilePEFTError("steps, epochs and batch size must be at least 1")
        }
        let learningRate = settings.learningRate ?? defaultLearningRate
        guard learningRate > 0, learningRate.isFinite else {
            throw MobilePEFTError("learning rate must be positive, got \(learningRate)")
        }
        encoded.removeAll()
        let rows = try self.rows(samples)
        let steps = settings.epochs.map { ($0 * rows.count + settings.batchSize - 1) / settings.batchSize } ?? settings.steps
        try session.setLearningRate(Float(learningRate))

        let before = try meanLoss(rows, samples, batchSize: settings.batchSize)
        var losses: [Double] = []
        var times: [Double] = []
        var stoppedEarly: String?
        var lastGood: AnyObject?
        for (k, indices) in Personalizer.batches(rows.count, settings.batchSize, steps, settings.seed).enumerated() {
            if isCancelled() {
                stoppedEarly = "cancelled after \(k) steps"
                break
            }
            let inputs = try layout.ordered(try batch(indices, rows, samples), as: session.trainInputNames)
            let (loss, forwardMs) = try timed { try session.trainStep(inputs) }
            guard loss.isFinite else {
                try session.lazyResetGrad()
                if let lastGood { try session.restoreTrainable(lastGood) }
                stoppedEarly = k == 0
                    ? "the loss was \(loss) at the first step, so nothing was trained (check the samples and the learning rate)"
                    : "the loss became \(loss) at step \(k + 1); training stopped and kept the weights of step \(k)"
                break
            }
            lastGood = try session.snapshotTrainable()
            let (_, updateMs) = try timed {
                try session.optimizerStep()
                try session.lazyResetGrad()
            }
            losses.append(Double(loss))
            times.append(forwardMs + updateMs)
            progress?(TrainingProgress(step: k + 1, totalSteps: steps, epoch: k * settings.batchSize / rows.count + 1,
                                       loss: loss, stepMs: forwardMs + updateMs))
        }
        let after = try meanLoss(rows, samples, batchSize: settings.batchSize)
        return PersonalizeReport(steps: losses.count, batchSize: settings.batchSize, learningRate: learningRate,
                                 samples: rows.count, evalLossBefore: before, evalLossAfter: after,
                                 trainLosses: losses, stepTimesMs: times, stoppedEarly: stoppedEarly,
                                 plannedSteps: steps, seconds: Date().timeIntervalSince(started))
    }

    /// Token-weighted mean eval loss over `rows` (one big batch's loss, whatever the batching).
    public func meanLoss(_ rows: [EncodedRow], _ samples: [PersonalSample], batchSize: Int) throws -> Double {
        var total = 0.0
        var tokens = 0
        for start in stride(from: 0, to: rows.count, by: batchSize) {
            let indices = Array(start..<min(start + batchSize, rows.count))
            let count = indices.reduce(0) { $0 + rows[$1].supervisedCount }
            let inputs = try layout.ordered(try batch(indices, rows, samples), as: session.evalInputNames)
            let loss = try session.evalLoss(inputs)
            total += Double(loss) * Double(count)
            tokens += count
        }
        return total / Double(max(tokens, 1))
    }

    /// Writes what the phone keeps into `directory`: `checkpoint` (continue tomorrow from it, or
    /// turn it into a PEFT adapter with `mobilepeft adapter from-ort`), `inference_model.onnx`,
    /// `adapter_parameters.bin` (the trainable float32 buffer) and `personalize.json`.
    public func save(_ report: PersonalizeReport, to directory: URL) throws -> [URL] {
        let manager = FileManager.default
        try manager.createDirectory(at: directory, withIntermediateDirectories: true)
        let checkpoint = directory.appendingPathComponent("checkpoint")
        try AtomicFiles.replace(checkpoint, sidecarSuffix: ".data") { try session.saveCheckpoint(to: $0) }
        let inference = directory.appendingPathComponent("inference_model.onnx")
        try AtomicFiles.replace(inference, sidecarSuffix: nil) { try session.exportInferenceModel(to: $0, outputs: inferenceOutputs) }

        let values = try session.trainableValues()
        guard values.count == trainableCount else {
            throw MobilePEFTError("the trainable buffer holds \(values.count) values, the manifest's trainable parameters \(trainableCount)")
        }
        let adapter = directory.appendingPathComponent("adapter_parameters.bin")
        try values.withUnsafeBytes { Data($0) }.write(to: adapter, options: .atomic)

        let reportFile = directory.appendingPathComponent("personalize.json")
        let json = JSONEncoder()
        json.outputFormatting = [.prettyPrinted, .sortedKeys]
        json.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try json.encode(report).write(to: reportFile, options: .atomic)
        return [checkpoint, inference, adapter, reportFile]
    }

    /// Named graph inputs for the rows at `indices`; each photo goes through the encoder once.
    private func batch(_ indices: [Int], _ rows: [EncodedRow], _ samples: [PersonalSample]) throws -> [String: TensorData] {
        let images: [[Float]?] = try indices.map { i in
            guard let pixels = samples[i].pixels, rows[i].hasImage else { return nil }
            if let cached = encoded[i] { return cached }
            let tokens = try encoder.encode(pixels)
            encoded[i] = tokens
            return tokens
        }
        return try layout.inputs(indices.map { rows[$0] }, images: images)
    }

    /// Epoch-wise shuffled index batches, `steps` of them (samples repeat when there are few),
    /// as mobilepeft/export/ort/personalize.py `_batches` (with a SplitMix64 shuffle instead of Python's).
    public static func batches(_ n: Int, _ batchSize: Int, _ steps: Int, _ seed: UInt64) -> [[Int]] {
        var generator = SeededGenerator(seed: seed)
        var order: [Int] = []
        while order.count < steps * batchSize {
            order += Array(0..<n).shuffled(using: &generator)
        }
        return (0..<steps).map { Array(order[($0 * batchSize)..<(($0 + 1) * batchSize)]) }
    }
}
