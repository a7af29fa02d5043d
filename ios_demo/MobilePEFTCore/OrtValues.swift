import Foundation
import onnxruntime_training_objc

/// `TensorData` <-> `ORTValue` (int64 and float32 tensors over `NSMutableData`), and the one
/// process-wide ORT environment.
enum OrtValues {
    /// An ORT tensor over a copy of `tensor`'s values. ORT does not copy caller data: keep the
    /// returned buffer alive until the call using the value has returned (`withValues`).
    static func value(_ tensor: TensorData) throws -> (value: ORTValue, buffer: NSMutableData) {
        let shape = tensor.shape.map { NSNumber(value: $0) }
        switch tensor {
        case .int64(let values, _):
            let data = values.withUnsafeBytes { NSMutableData(bytes: $0.baseAddress, length: $0.count) }
            return (try ORTValue(tensorData: data, elementType: .int64, shape: shape), data)
        case .float(let values, _):
            let data = values.withUnsafeBytes { NSMutableData(bytes: $0.baseAddress, length: $0.count) }
            return (try ORTValue(tensorData: data, elementType: .float, shape: shape), data)
        }
    }

    /// Calls `body` with ORT values of `tensors`, their buffers alive throughout.
    static func withValues<R>(_ tensors: [TensorData], _ body: ([ORTValue]) throws -> R) throws -> R {
        let made = try tensors.map { try OrtValues.value($0) }
        return try withExtendedLifetime(made.map(\.buffer)) { try body(made.map(\.value)) }
    }

    /// A float32 tensor's values.
    static func floats(_ value: ORTValue, what: String) throws -> [Float] {
        let info = try value.tensorTypeAndShapeInfo()
        guard info.elementType == .float else {
            throw MobilePEFTError("ONNX Runtime returned \(what) of element type \(info.elementType.rawValue), expected float32")
        }
        let data = try value.tensorData()
        let count = data.length / MemoryLayout<Float>.size
        return [Float](UnsafeBufferPointer(start: data.bytes.assumingMemoryBound(to: Float.self), count: count))
    }

    static func shape(_ value: ORTValue) throws -> [Int] {
        try value.tensorTypeAndShapeInfo().shape.map(\.intValue)
    }

    /// The ORT environment, created once (warnings and errors logged).
    static func environment() throws -> ORTEnv {
        try sharedEnvironment.get()
    }

    private static let sharedEnvironment = Result { try ORTEnv(loggingLevel: .warning) }

    static func sessionOptions(threads: Int) throws -> ORTSessionOptions {
        let options = try ORTSessionOptions()
        try options.setIntraOpNumThreads(Int32(threads))
        return options
    }
}
