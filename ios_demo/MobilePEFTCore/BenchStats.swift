import Foundation

/// Median, minimum and maximum of the measured runs (Python's `statistics.median`: the mean of
/// the two middle values for an even count).
public struct BenchStats {
    public let median: Double
    public let min: Double
    public let max: Double

    public init(_ samples: [Double]) throws {
        guard !samples.isEmpty else { throw MobilePEFTError("no measured runs to summarise") }
        let sorted = samples.sorted()
        let middle = sorted.count / 2
        median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
        min = sorted[0]
        max = sorted[sorted.count - 1]
    }
}

/// Wall-clock milliseconds of `body`, and its result.
public func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
    let start = DispatchTime.now().uptimeNanoseconds
    let value = try body()
    return (value, Double(DispatchTime.now().uptimeNanoseconds - start) / 1_000_000)
}
