import MobilePEFTCore
import PhotosUI
import SwiftUI
import UniformTypeIdentifiers

/// Teach the bundle's adapter about your own photos: pick photos, write a question and the
/// answer to learn for each, train on the phone (ONNX Runtime), watch the loss, compare the
/// answers before and after, share the adapter and checkpoint.
struct PersonalizeView: View {
    @StateObject private var model = PersonalizeModel()
    @State private var importing = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Bundle") {
                    Button(model.bundle?.name ?? "Choose an ONNX training bundle…") { importing = true }
                        .disabled(model.isTraining)
                    if model.hasLastSession {
                        Toggle("Continue from the last session", isOn: $model.continueFromLast)
                    }
                    if let error = model.error {
                        Text(error).foregroundStyle(.red).font(.callout)
                    }
                }
                Section("Your examples") {
                    PhotosPicker(selection: $model.pickerItems, maxSelectionCount: 12, matching: .images) {
                        Label("Add photos", systemImage: "photo.on.rectangle.angled")
                    }
                    ForEach($model.examples) { $example in
                        VStack(alignment: .leading, spacing: 8) {
                            if let image = example.image {
                                Image(decorative: image, scale: 1)
                                    .resizable()
                                    .scaledToFit()
                                    .frame(maxHeight: 140)
                            }
                            TextField("Question", text: $example.question)
                            TextField("The answer to learn", text: $example.answer, axis: .vertical)
                        }
                    }
                    .onDelete { model.examples.remove(atOffsets: $0) }
                    Button("Add a text-only example") { model.addTextExample() }
                }
                .disabled(model.isTraining)
                Section("Training") {
                    Stepper("Steps: \(model.steps)", value: $model.steps, in: 1...500)
                    Stepper("Batch size: \(model.batchSize)", value: $model.batchSize, in: 1...16)
                    LabeledContent("Learning rate") {
                        TextField("manifest default", text: $model.learningRate)
                            .keyboardType(.decimalPad)
                            .multilineTextAlignment(.trailing)
                    }
                }
                .disabled(model.isTraining)
                Section {
                    if model.isTraining {
                        Button("Stop", role: .destructive) { model.stop() }
                        ProgressView(value: Double(model.step), total: Double(max(model.totalSteps, 1))) {
                            Text(model.status).font(.callout.monospaced())
                        }
                    } else {
                        Button("Train on this phone") { model.train() }
                            .disabled(model.bundle == nil || model.examples.isEmpty)
                        if !model.status.isEmpty { Text(model.status).font(.callout) }
                    }
                }
                if !model.losses.isEmpty {
                    Section("Loss") {
                        LossChart(losses: model.losses).frame(height: 180)
                    }
                }
                if !model.answers.isEmpty {
                    Section("Before and after") {
                        ForEach(model.answers) { pair in
                            VStack(alignment: .leading, spacing: 4) {
                                Text(pair.question).bold()
                                Text("Before: \(pair.before)")
                                Text("After: \(pair.after ?? "…")").foregroundStyle(.green)
                            }
                        }
                    }
                }
                if !model.outputs.isEmpty {
                    Section("Export") {
                        ShareLink(items: model.outputs) {
                            Label("Share adapter, checkpoint and model", systemImage: "square.and.arrow.up")
                        }
                        ForEach(model.outputs, id: \.self) { Text($0.lastPathComponent).font(.caption.monospaced()) }
                    }
                }
            }
            .navigationTitle("Personalize")
            .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { model.open($0) }
            .onChange(of: model.pickerItems) {
                if !model.pickerItems.isEmpty { model.loadPhotos() }
            }
        }
    }
}
