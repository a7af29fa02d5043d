import MobilePEFTCore
import SwiftUI
import UniformTypeIdentifiers

/// Pick a bundle folder, run the chat-turn benchmark on its ExecuTorch program or Core ML
/// packages, read the figures, share the JSON (the keys `mobilepeft bench` writes).
struct BenchmarkView: View {
    @StateObject private var model = BenchmarkModel()
    @State private var importing = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Bundle") {
                    Button(model.bundle?.name ?? "Choose a bundle folder…") { importing = true }
                        .disabled(model.isRunning)
                    if let error = model.error {
                        Text(error).foregroundStyle(.red).font(.callout)
                    }
                }
                if model.bundle != nil {
                    Section("Runtime") {
                        Picker("Runtime", selection: $model.runtime) {
                            ForEach(model.runtimes) { Text($0.title).tag($0) }
                        }
                        .pickerStyle(.segmented)
                    }
                    Section("Chat turn") {
                        Stepper("Prompt tokens: \(model.settings.promptLength)", value: $model.settings.promptLength, in: 1...1024)
                        Stepper("Generated tokens: \(model.settings.genLength)", value: $model.settings.genLength, in: 1...1024)
                        Stepper("Measured runs: \(model.settings.runs)", value: $model.settings.runs, in: 1...50)
                        Stepper("Warm-up runs: \(model.settings.warmup)", value: $model.settings.warmup, in: 0...10)
                    }
                    Section {
                        Button(model.isRunning ? "Running…" : "Run benchmark") { model.run() }
                            .disabled(model.isRunning)
                        if model.isRunning { ProgressView(model.log.last ?? "loading…") }
                    }
                }
                if let result = model.result {
                    Section("Metrics") {
                        ForEach(result.rows) { row in
                            LabeledContent(row.key, value: row.value).font(.callout.monospaced())
                        }
                        if let file = model.resultFile {
                            ShareLink(item: file) { Label("Share JSON", systemImage: "square.and.arrow.up") }
                        }
                    }
                }
            }
            .navigationTitle("Benchmark")
            .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { model.open($0) }
        }
    }
}
