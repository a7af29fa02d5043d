import SwiftUI

/// Two screens over a mobilepeft bundle: benchmark its ExecuTorch program or Core ML packages,
/// and personalise its adapter on the user's own photos with ONNX Runtime training.
@main
struct MobilePEFTDemoApp: App {
    var body: some Scene {
        WindowGroup {
            TabView {
                BenchmarkView()
                    .tabItem { Label("Benchmark", systemImage: "speedometer") }
                PersonalizeView()
                    .tabItem { Label("Personalize", systemImage: "person.crop.square") }
            }
        }
    }
}
