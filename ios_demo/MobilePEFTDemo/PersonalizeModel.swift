import CoreGraphics
import Foundation
import MobilePEFTCore
import PhotosUI
import SwiftUI

/// One example the user writes: an optional photo, a question, the answer to learn.
struct ExampleDraft: Identifiable {
    let id = UUID()
    var image: CGImage?
    var question = "What is in this photo?"
    var answer = ""
}

/// One question asked before and after training.
struct AnswerPair: Identifiable {
    let id = UUID()
    let question: String
    let before: String
    var after: String?
}

/// A flag the training loop polls (set from the main actor, read from the training thread).
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    func set(_ newValue: Bool) {
        lock.lock()
        value = newValue
        lock.unlock()
    }
}

/// The Personalize screen's state and its background work: open the ORT bundle, answer the
/// first questions, train with progress, save checkpoint + adapter + inference model (and an
/// `adapter-<bundle>.ptd` for each deployable ExecuTorch bundle), answer again.
@MainActor
final class PersonalizeModel: ObservableObject {
    @Published private(set) var bundle: BundleFolder?
    @Published var pickerItems: [PhotosPickerItem] = []
    @Published var examples: [ExampleDraft] = []
    @Published var steps = 20
    @Published var batchSize = 2
    @Published var learningRate = ""
    @Published var continueFromLast = false
    @Published private(set) var hasLastSession = false
    @Published private(set) var isTraining = false
    @Published private(set) var status = ""
    @Published private(set) var step = 0
    @Published private(set) var totalSteps = 0
    @Published private(set) var losses: [Double] = []
    @Published private(set) var answers: [AnswerPair] = []
    @Published private(set) var outputs: [URL] = []
    @Published var error: String?

    private let cancel = CancelFlag()
    /// Questions asked before and after training (each costs a few seconds per answer).
    private let answeredExamples = 3

    /// Where this bundle's sessions are kept: Documents/Personalization/<bundle>.
    private var outputDirectory: URL? {
        bundle.map { BundleFolder.documents.appendingPathComponent("Personalization").appendingPathComponent($0.name) }
    }

    func open(_ picked: Result<URL, Error>) {
        error = nil
        do {
            let folder = try BundleFolder(url: picked.get())
            guard folder.manifest.has("onnx_training") else {
                throw MobilePEFTError("\(folder.name) has no ONNX training artifacts; export one with `mobilepeft export onnx-training`")
            }
            bundle = folder
            learningRate = try String(folder.manifest.double("onnx_training.optimizer.default_learning_rate"))
            refreshLastSession()
        } catch {
            self.error = error.localizedDescription
        }
    }

    func loadPhotos() {
        let items = pickerItems
        pickerItems = []
        Task {
            for item in items {
                do {
                    guard let data = try await item.loadTransferable(type: Data.self) else { continue }
                    let image = try ImageLoading.cgImage(from: data)
                    examples.append(ExampleDraft(image: image))
                } catch {
                    self.error = "a photo could not be read (\(error.localizedDescription))"
                }
            }
        }
    }

    func addTextExample() {
        examples.append(ExampleDraft(image: nil, question: "", answer: ""))
    }

    func stop() {
        cancel.set(true)
        status = "stopping after this step…"
    }

    func train() {
        guard let bundle, let outputDirectory, !isTraining else { return }
        let drafts = examples.filter { !$0.question.isEmpty && !$0.answer.isEmpty }
        guard !drafts.isEmpty else {
            error = "write a question and the answer to learn for at least one example"
            return
        }
        var settings = PersonalizeSettings(steps: steps, batchSize: batchSize)
        if !learningRate.isEmpty {
            guard let value = Double(learningRate), value > 0 else {
                error = "the learning rate must be a positive number"
                return
            }
            settings.learningRate = value
        }
        let checkpoint = continueFromLast ? outputDirectory.appendingPathComponent("checkpoint") : nil
        error = nil
        isTraining = true
        losses = []
        answers = []
        outputs = []
        step = 0
        totalSteps = steps
        cancel.set(false)
        let flag = self.cancel, asked = self.answeredExamples
        Task.detached(priority: .userInitiated) {
            do {
                try await self.runSession(bundle.manifest, drafts, settings, checkpoint, outputDirectory, flag, asked)
            } catch {
                await MainActor.run { self.error = error.localizedDescription }
            }
            await MainActor.run {
                self.isTraining = false
                self.status = ""
                self.refreshLastSession()
            }
        }
    }

    /// The ExecuTorch bundles in Documents that keep this adapter as data (`mobilepeft export executorch
    /// --adapter-as-data`): each gets the personalized adapter as `adapter-<bundle>.ptd`, which its
    /// runner swaps in without re-export (docs/on-device-loop.md). Other bundles are left alone.
    nonisolated private func deployableBundles(_ ort: Manifest) throws -> [BundleFolder] {
        let folders = (try? FileManager.default.contentsOfDirectory(at: BundleFolder.documents,
                                                                    includingPropertiesForKeys: nil)) ?? []
        return try folders.sorted(by: { $0.path < $1.path }).compactMap { folder in
            guard let bundle = try? BundleFolder(url: folder) else { return nil }
            return try AdapterFile.fits(executorchBundle: bundle.manifest, ortBundle: ort) ? bundle : nil
        }
    }

    nonisolated private func writeAdapterFiles(_ ort: Manifest, _ bundles: [BundleFolder], _ personalizer: Personalizer,
                                               _ outputDirectory: URL) throws -> [URL] {
        let trainable = try personalizer.session().trainableValues()
        return try bundles.map { bundle in
            let out = outputDirectory.appendingPathComponent("adapter-\(bundle.name).ptd")
            try AdapterFile.write(executorchBundle: bundle.manifest, ortBundle: ort, trainable: trainable, to: out)
            return out
        }
    }

    /// The whole session, off the main actor. With a deployable ExecuTorch bundle in Documents the
    /// answers come from it through the native runner (opened to answer before and again after training,
    /// never beside the training session; the personalized adapter swapped in
    /// after training), otherwise from ONNX Runtime's inference graph.
    nonisolated private func runSession(_ manifest: Manifest, _ drafts: [ExampleDraft], _ settings: PersonalizeSettings,
                                        _ checkpoint: URL?, _ outputDirectory: URL, _ cancel: CancelFlag,
                                        _ asked: Int) async throws {
        await show("checking memory, reading the photos…")
        let threads = DeviceInfo.performanceCores
        let personalizer = try OrtPersonalizer.open(manifest: manifest, checkpointURL: checkpoint,
                                                    batchSize: settings.batchSize, threads: threads)
        let preprocessor = try ImagePreprocessor(manifest: manifest)
        let template = personalizer.template
        let samples = try drafts.map { draft in
            let pixels = try draft.image.map { try preprocessor.pixelValues($0) }
            let question = pixels == nil ? draft.question : template.withImage(draft.question)
            return PersonalSample(pixels: pixels, turns: [ConversationTurn(question: question, answer: draft.answer)])
        }
        // The frozen graphs run over every sample once and are released before anything else opens.
        await show("running the frozen graphs over \(samples.count) samples…")
        let prepared = try personalizer.prepare(samples)
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("before_\(UUID().uuidString).onnx")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let deploy = try deployableBundles(manifest)
        let photos = try samples.prefix(asked).enumerated().map { i, sample in
            try sample.pixels.map {
                try NativeRunner.pixelFile($0, to: FileManager.default.temporaryDirectory.appendingPathComponent("photo\(i).f32"))
            }
        }
        defer { photos.compactMap { $0 }.forEach { try? FileManager.default.removeItem(at: $0) } }

        // The deployed model is open only while it answers: never beside the training session.
        await show("answering before training…")
        let before: [String]
        if let bundle = deploy.first {
            let native = try NativeRunner.open(bundle: bundle.url, threads: threads)
            before = try zip(drafts, photos).map { draft, photo in try native.answer(draft.question, image: photo) }
        } else {
            try personalizer.session().exportInferenceModel(to: scratch, outputs: personalizer.inferenceOutputs)
            before = try answerAll(personalizer, model: scratch, manifest, drafts, prepared, asked, threads)
        }
        await MainActor.run { self.answers = zip(drafts, before).map { AnswerPair(question: $0.question, before: $1) } }

        await show("training…")
        let report = try personalizer.train(settings: settings, progress: { progress in
            Task { @MainActor in
                self.step = progress.step
                self.totalSteps = progress.totalSteps
                self.losses.append(Double(progress.loss))
                self.status = String(format: "step %ld/%ld · epoch %ld · loss %.4f · %.0f ms",
                                     progress.step, progress.totalSteps, progress.epoch, progress.loss, progress.stepMs)
            }
        }, isCancelled: { cancel.isSet })

        await show("saving the adapter and checkpoint…")
        var files = try personalizer.save(report, to: outputDirectory)
        if report.steps > 0 {
            let bench = outputDirectory.appendingPathComponent("bench_train.json")
            try report.benchResult(harness: "ios-app", threads: threads).write(to: bench)
            files.append(bench)
        }
        let adapterFiles = try writeAdapterFiles(manifest, deploy, personalizer, outputDirectory)
        files += adapterFiles
        await MainActor.run { self.outputs = files }

        await show("answering after training…")
        let after: [String]
        var deployed = ""
        if let bundle = deploy.first, let adapter = adapterFiles.first {
            let native = try NativeRunner.open(bundle: bundle.url, threads: threads)
            let swapMs = try native.swap(to: adapter)
            deployed = String(format: " · answers from %@ (ExecuTorch): adapter swapped in %.1f ms, RSS %.0f MB",
                              deploy[0].name, swapMs, NativeRunner.rssMb)
            after = try zip(drafts, photos).map { draft, photo in try native.answer(draft.question, image: photo) }
        } else {
            let inference = outputDirectory.appendingPathComponent("inference_model.onnx")
            after = try answerAll(personalizer, model: inference, manifest, drafts, prepared, asked, threads)
        }
        let summary = (report.stoppedEarly ?? String(format: "eval loss %.4f → %.4f", report.evalLossBefore,
                                                     report.evalLossAfter)) + deployed
        await MainActor.run {
            for i in self.answers.indices where i < after.count { self.answers[i].after = after[i] }
            self.error = report.stoppedEarly
            self.status = summary
        }
    }

    nonisolated private func answerAll(_ personalizer: Personalizer, model: URL, _ manifest: Manifest,
                                       _ drafts: [ExampleDraft], _ prepared: PreparedSamples, _ asked: Int,
                                       _ threads: Int) throws -> [String] {
        let answerer = try OrtAnswerer(model: model, manifest: manifest, template: personalizer.template, threads: threads)
        return try zip(drafts, prepared.imageTokens).prefix(asked).map { draft, tokens in
            try answerer.answer(draft.question, imageTokens: tokens)
        }
    }

    nonisolated private func show(_ text: String) async {
        await MainActor.run { self.status = text }
    }

    private func refreshLastSession() {
        guard let outputDirectory else {
            hasLastSession = false
            return
        }
        hasLastSession = FileManager.default.fileExists(atPath: outputDirectory.appendingPathComponent("checkpoint").path)
        if !hasLastSession { continueFromLast = false }
    }
}
