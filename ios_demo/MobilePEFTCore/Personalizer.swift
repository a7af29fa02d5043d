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

/// What the frozen graphs give each sample, computed once before the training session opens: its
/// row, its image tokens (nil without a photo) and, for a `--train-layers` bundle, its hidden
/// states from the frozen decoder layers.
public struct PreparedSamples {
    public let rows: [EncodedRow]
    public let imageTokens: [[Float]?]
    public let hiddenStates: [[Float]]?
}

/// What a personalization session will hold at its peak (`onnx_training.memory_estimate_mib`, estimated
/// by the exporter from the file sizes; docs/on-device-training.md, "Memory"): the frozen graphs run
/// first and are released before the training session opens, so the peak is the larger phase.
public struct MemoryEstimate {
    public let frozenGraphsMB: Double
    public let trainingMB: Double
    public let trainingPerBatchRowMB: Double

    public init(manifest: Manifest) throws {
        frozenGraphsMB = try manifest.double("onnx_training.memory_estimate_mib.frozen_graphs")
        trainingMB = try manifest.double("onnx_training.memory_estimate_mib.training")
        trainingPerBatchRowMB = try manifest.double("onnx_training.memory_estimate_mib.training_per_batch_row")
    }

    public func training(batchSize: Int) -> Double { trainingMB + Double(batchSize) * trainingPerBatchRowMB }

    /// Refuses, before anything loads, a session that would not fit `availableMB` (`DeviceInfo.availableMegabytes()`).
    public func check(batchSize: Int, availableMB: Double) throws {
        let training = training(batchSize: batchSize)
        let (phase, need) = training >= frozenGraphsMB ? ("training", training) : ("frozen graphs", frozenGraphsMB)
        guard need <= availableMB else {
            let hint = phase == "training" ? "lower the batch size, or export with a smaller --train-layers"
                                           : "export the frozen layers with --prefix-weights int8"
            throw MobilePEFTError(String(format: "personalizing this bundle needs about %.0f MiB (%@, batch %ld); this phone can give it %.0f MiB: %@",
                                         need, phase, batchSize, availableMB, hint))
        }
    }
}

/// The phone's training loop, as `mobilepeft personalize` (mobilepeft/export/ort/personalize.py) replays it on
/// the desktop: conversations through the bundle's template; `prepare` runs the frozen graphs, each
/// once per sample and one at a time (photos through the vision encoder, then a `--train-layers`
/// bundle's samples through its frozen decoder layers) and releases them; only then does the
/// training session open (`session()`), so the graphs never share the phone's memory. Then
/// epoch-wise shuffled batches (seeded), `trainStep` + `optimizerStep` + `lazyResetGrad` per step,
/// token-weighted eval loss before and after.
///
/// A non-finite loss stops training before its update is applied, and the trainable weights
/// go back to the last ones that gave a finite loss (a snapshot taken before each update), so
/// what is saved is never a diverged adapter.
public final class Personalizer {
    public let template: ConversationTemplate
    public let layout: TrainingBatchLayout
    public let defaultLearningRate: Double
    public let inferenceOutputs: [String]
    /// Floats the trainable buffer must hold: the manifest's trainable shapes summed.
    public let trainableCount: Int
    public private(set) var prepared: PreparedSamples?

    private var encoder: ImageEncoder?
    private let openPrefix: (() throws -> DecoderPrefix)?
    private let openSession: () throws -> TrainingSession
    private var opened: TrainingSession?

    /// `openPrefix`: a `--train-layers` bundle's frozen layers (nil for a whole-decoder bundle);
    /// `openSession`: the training session. Both are opened when needed, not here.
    public init(openSession: @escaping () throws -> TrainingSession, encoder: ImageEncoder,
                openPrefix: (() throws -> DecoderPrefix)?, template: ConversationTemplate, manifest: Manifest) throws {
        self.openSession = openSession
        self.encoder = encoder
        self.openPrefix = openPrefix
        self.template = template
        self.layout = try TrainingBatchLayout(manifest: manifest)
        self.defaultLearningRate = try manifest.double("onnx_training.optimizer.default_learning_rate")
        self.inferenceOutputs = try manifest.strings("onnx_training.inference_outputs[]")
        let trainable = try manifest.count("onnx_training.trainable[]")
        self.trainableCount = try (0..<trainable).reduce(0) { total, i in
            try total + manifest.ints("onnx_training.trainable[].shape[]", i).reduce(1, *)
        }
        if layout.splitOutputName != nil, openPrefix == nil {
            throw MobilePEFTError("this bundle trains only its top decoder layers (onnx_training.split): open its frozen layers too")
        }
    }

    /// The training session, opened at the first call (after `prepare`, so the frozen graphs are gone).
    public func session() throws -> TrainingSession {
        if let opened { return opened }
        let session = try openSession()
        opened = session
        return session
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

    /// Runs the frozen graphs over `samples` once and releases them: every photo through the vision
    /// encoder, then (a `--train-layers` bundle) every sample through the frozen decoder layers.
    @discardableResult
    public func prepare(_ samples: [PersonalSample]) throws -> PreparedSamples {
        guard let encoder else {
            throw MobilePEFTError("this session has prepared its samples already; open a new one for other samples")
        }
        guard !samples.isEmpty else { throw MobilePEFTError("add at least one photo or question to train on") }
        let rows = try self.rows(samples)
        let images: [[Float]?] = try zip(samples, rows).map { sample, row in
            guard let pixels = sample.pixels, row.hasImage else { return nil }
            return try encoder.encode(pixels)
        }
        self.encoder = nil
        var hidden: [[Float]]?
        if let openPrefix {
            let prefix = try openPrefix()
            hidden = try rows.indices.map { i in try prefix.hiddenStates(try layout.inputs([rows[i]], images: [images[i]])) }
        }
        let result = PreparedSamples(rows: rows, imageTokens: images, hiddenStates: hidden)
        prepared = result
        return result
    }

    /// Trains on the prepared samples (`prepare` first).
    public func train(settings: PersonalizeSettings, progress: ((TrainingProgress) -> Void)? = nil,
                      isCancelled: () -> Bool = { false }) throws -> PersonalizeReport {
        let started = Date()
        guard let prepared else { throw MobilePEFTError("prepare the samples before training") }
        guard settings.batchSize >= 1, settings.steps >= 1, (settings.epochs ?? 1) >= 1 else {
            throw MobilePEFTError("steps, epochs and batch size must be at least 1")
        }
        let learningRate = settings.learningRate ?? defaultLearningRate
        guard learningRate > 0, learningRate.isFinite else {
            throw MobilePEFTError("learning rate must be positive, got \(learningRate)")
        }
        let session = try self.session()
        let rows = prepared.rows
        let steps = settings.epochs.map { ($0 * rows.count + settings.batchSize - 1) / settings.batchSize } ?? settings.steps
        try session.setLearningRate(Float(learningRate))

        let before = try meanLoss(prepared, batchSize: settings.batchSize)
        var losses: [Double] = []
        var times: [Double] = []
        var stoppedEarly: String?
        var lastGood: AnyObject?
        for (k, indices) in Personalizer.batches(rows.count, settings.batchSize, steps, settings.seed).enumerated() {
            if isCancelled() {
                stoppedEarly = "cancelled after \(k) steps"
                break
            }
            let inputs = try layout.ordered(try batch(indices, prepared), as: session.trainInputNames)
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
        let after = try meanLoss(prepared, batchSize: settings.batchSize)
        return PersonalizeReport(steps: losses.count, batchSize: settings.batchSize, learningRate: learningRate,
                                 samples: rows.count, evalLossBefore: before, evalLossAfter: after,
                                 trainLosses: losses, stepTimesMs: times, stoppedEarly: stoppedEarly,
                                 plannedSteps: steps, seconds: Date().timeIntervalSince(started))
    }

    /// Token-weighted mean eval loss over the prepared rows (one big batch's loss, whatever the batching).
    public func meanLoss(_ prepared: PreparedSamples, batchSize: Int) throws -> Double {
        let session = try self.session()
        var total = 0.0
        var tokens = 0
        for start in stride(from: 0, to: prepared.rows.count, by: batchSize) {
            let indices = Array(start..<min(start + batchSize, prepared.rows.count))
            let count = indices.reduce(0) { $0 + prepared.rows[$1].supervisedCount }
            let inputs = try layout.ordered(try batch(indices, prepared), as: session.evalInputNames)
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
        let session = try self.session()
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

    /// Named graph inputs for the prepared rows at `indices`.
    private func batch(_ indices: [Int], _ prepared: PreparedSamples) throws -> [String: TensorData] {
        let rows = indices.map { prepared.rows[$0] }
        if let hidden = prepared.hiddenStates {
            return try layout.splitInputs(rows, hidden: indices.map { hidden[$0] })
        }
        return try layout.inputs(rows, images: indices.map { prepared.imageTokens[$0] })
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
