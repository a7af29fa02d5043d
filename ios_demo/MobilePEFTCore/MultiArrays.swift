import Accelerate
import CoreML
import Foundation

/// Core ML multi-arrays in and out, honouring the strides Core ML reports (an output's rows may
/// be padded) and converting float16 with Accelerate (no `Float16`, which x86 simulators lack).
enum MultiArrays {
    /// A new array of `shape` holding `values` (row-major) as `dtype` (`float16` or `float32`).
    static func floats(_ values: [Float], shape: [Int], dtype: String) throws -> MLMultiArray {
        switch dtype {
        case "float16":
            let halves = toHalf(values)
            return try filled(shape: shape, dataType: .float16, count: values.count) { raw, offset, i in
                raw.storeBytes(of: halves[i], toByteOffset: offset * 2, as: UInt16.self)
            }
        case "float32":
            return try filled(shape: shape, dataType: .float32, count: values.count) { raw, offset, i in
                raw.storeBytes(of: values[i], toByteOffset: offset * 4, as: Float.self)
            }
        default:
            throw MobilePEFTError("Core ML input of dtype \(dtype) where this app feeds float16 or float32")
        }
    }

    static func int32(_ values: [Int32], shape: [Int]) throws -> MLMultiArray {
        try filled(shape: shape, dataType: .int32, count: values.count) { raw, offset, i in
            raw.storeBytes(of: values[i], toByteOffset: offset * 4, as: Int32.self)
        }
    }

    /// A float16 array of zeros (the iOS 17 decoder's empty KV cache).
    static func zeros(shape: [Int]) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float16)
        array.withUnsafeMutableBytes { raw, _ in
            if let base = raw.baseAddress { memset(base, 0, raw.count) }
        }
        return array
    }

    /// All elements as float32, row-major.
    static func floatValues(_ array: MLMultiArray) throws -> [Float] {
        let shape = array.shape.map(\.intValue)
        let offsets = elementOffsets(shape: shape, strides: array.strides.map(\.intValue))
        return try array.withUnsafeBytes { raw -> [Float] in
            switch array.dataType {
            case .float16:
                return toFloat(offsets.map { raw.load(fromByteOffset: $0 * 2, as: UInt16.self) })
            case .float32:
                return offsets.map { raw.load(fromByteOffset: $0 * 4, as: Float.self) }
            case .double:
                return offsets.map { Float(raw.load(fromByteOffset: $0 * 8, as: Double.self)) }
            default:
                throw MobilePEFTError("Core ML returned a multi-array of type \(array.dataType.rawValue) where floats were expected")
            }
        }
    }

    /// Greedy next token from logits `[1, T, V]`: argmax over the last position's row.
    static func argmaxLastRow(_ array: MLMultiArray) throws -> Int {
        let shape = array.shape.map(\.intValue), strides = array.strides.map(\.intValue)
        guard shape.count >= 2, let vocab = shape.last, vocab > 0 else {
            throw MobilePEFTError("Core ML logits have shape \(shape), expected [1, T, V]")
        }
        let rowStart = (shape[shape.count - 2] - 1) * strides[strides.count - 2]
        let stride = strides[strides.count - 1]
        let row: [Float] = try array.withUnsafeBytes { raw -> [Float] in
            switch array.dataType {
            case .float16:
                return toFloat((0..<vocab).map { raw.load(fromByteOffset: (rowStart + $0 * stride) * 2, as: UInt16.self) })
            case .float32:
                return (0..<vocab).map { raw.load(fromByteOffset: (rowStart + $0 * stride) * 4, as: Float.self) }
            default:
                throw MobilePEFTError("Core ML logits of type \(array.dataType.rawValue), expected float16 or float32")
            }
        }
        return row.withUnsafeBufferPointer { Argmax.row($0, start: 0, stride: 1, width: vocab) }
    }

    // MARK: - Helpers

    private static func filled(shape: [Int], dataType: MLMultiArrayDataType, count: Int,
                               store: (UnsafeMutableRawBufferPointer, Int, Int) -> Void) throws -> MLMultiArray {
        guard shape.reduce(1, *) == count else {
            throw MobilePEFTError("\(count) values do not fill a Core ML input of shape \(shape)")
        }
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: dataType)
        array.withUnsafeMutableBytes { raw, strides in
            for (i, offset) in elementOffsets(shape: shape, strides: strides).enumerated() {
                store(raw, offset, i)
            }
        }
        return array
    }

    /// The element offset of each index, in row-major order.
    private static func elementOffsets(shape: [Int], strides: [Int]) -> [Int] {
        let count = shape.reduce(1, *)
        var offsets = [Int](repeating: 0, count: count)
        var index = [Int](repeating: 0, count: shape.count)
        var offset = 0
        for i in 0..<count {
            offsets[i] = offset
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                offset += strides[d]
                if index[d] < shape[d] { break }
                offset -= strides[d] * index[d]
                index[d] = 0
                d -= 1
            }
        }
        return offsets
    }

    private static func toHalf(_ values: [Float]) -> [UInt16] {
        var halves = [UInt16](repeating: 0, count: values.count)
        guard !values.isEmpty else { return halves }
        values.withUnsafeBufferPointer { source in
            halves.withUnsafeMutableBufferPointer { target in
                var src = vImage_Buffer(data: UnsafeMutableRawPointer(mutating: source.baseAddress!), height: 1,
                                        width: vImagePixelCount(values.count), rowBytes: values.count * 4)
                var dst = vImage_Buffer(data: UnsafeMutableRawPointer(target.baseAddress!), height: 1,
                                        width: vImagePixelCount(values.count), rowBytes: values.count * 2)
                _ = vImageConvert_PlanarFtoPlanar16F(&src, &dst, vImage_Flags(kvImageNoFlags))
            }
        }
        return halves
    }

    private static func toFloat(_ halves: [UInt16]) -> [Float] {
        var floats = [Float](repeating: 0, count: halves.count)
        guard !halves.isEmpty else { return floats }
        halves.withUnsafeBufferPointer { source in
            floats.withUnsafeMutableBufferPointer { target in
                var src = vImage_Buffer(data: UnsafeMutableRawPointer(mutating: source.baseAddress!), height: 1,
                                        width: vImagePixelCount(halves.count), rowBytes: halves.count * 2)
                var dst = vImage_Buffer(data: UnsafeMutableRawPointer(target.baseAddress!), height: 1,
                                        width: vImagePixelCount(halves.count), rowBytes: halves.count * 4)
                _ = vImageConvert_Planar16FtoPlanarF(&src, &dst, vImage_Flags(kvImageNoFlags))
            }
        }
        return floats
    }
}
