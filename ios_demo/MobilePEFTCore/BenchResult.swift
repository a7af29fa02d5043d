import Foundation

/// One benchmark's figures with the keys of mobilepeft/export/bench.schema.json (docs/mobile.md), the same
/// keys `mobilepeft bench`, the Android app and the native runner write. Every key is written by
/// a `put` call whose first argument is the key as a string literal, so a host test can check them.
public struct BenchResult {
    private var values: [String: Any] = [:]

    public init() {}

    public mutating func put(_ key: String, _ value: Double) { values[key] = value }
    public mutating func put(_ key: String, _ value: Int) { values[key] = value }
    public mutating func put(_ key: String, _ value: String) { values[key] = value }
    /// `key` (the median), `key_min` and `key_max`: how every harness reports a measured series.
    public mutating func putStats(_ key: String, _ stats: BenchStats) {
        put(key, stats.median)
        put(key + "_min", stats.min)
        put(key + "_max", stats.max)
    }

    public var keys: [String] { values.keys.sorted() }

    public func value(_ key: String) -> Any? { values[key] }

    /// Key and printable value, sorted by key (for a metrics list).
    public var rows: [BenchRow] {
        keys.map { key in
            switch values[key] {
            case let number as Double: return BenchRow(key: key, value: String(format: "%.2f", number))
            case let some?: return BenchRow(key: key, value: "\(some)")
            case nil: return BenchRow(key: key, value: "")
            }
        }
    }

    /// Pretty-printed JSON with sorted keys; a non-finite figure (a zero-length timing) is an error.
    public func jsonData() throws -> Data {
        for (key, value) in values {
            if let number = value as? Double, !number.isFinite {
                throw MobilePEFTError("benchmark figure \(key) is \(number); the measurement is broken")
            }
        }
        return try JSONSerialization.data(withJSONObject: values, options: [.prettyPrinted, .sortedKeys])
    }

    public func write(to url: URL) throws {
        try jsonData().write(to: url, options: .atomic)
    }
}

/// One line of a metrics list.
public struct BenchRow: Identifiable {
    public let key: String
    public let value: String
    public var id: String { key }
}
