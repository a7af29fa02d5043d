import Foundation

/// Greedy decoding's choice: the index of the largest value in the last row of `[..., rows, width]`
/// logits (the first one on ties, as `torch.argmax`; NaNs never win).
enum Argmax {
    static func lastRow(_ logits: UnsafeBufferPointer<Float>, width: Int) throws -> Int {
        guard width > 0, logits.count >= width, logits.count % width == 0 else {
            throw MobilePEFTError("logits of \(logits.count) values do not split into rows of \(width)")
        }
        return row(logits, start: logits.count - width, stride: 1, width: width)
    }

    /// `width` values from `start`, `stride` apart.
    static func row(_ values: UnsafeBufferPointer<Float>, start: Int, stride: Int, width: Int) -> Int {
        var best = -1
        var bestValue = -Float.infinity
        for i in 0..<width {
            let value = values[start + i * stride]
            if !value.isNaN && (best < 0 || value > bestValue) {
                best = i
                bestValue = value
            }
        }
        return max(best, 0)
    }
}
