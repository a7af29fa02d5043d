import Foundation

/// A bundle's `manifest.json` (schema: mobilepeft/export/bundle.schema.json), the only description of the
/// model the app reads.
///
/// Every read names its path from the manifest root as a string literal, so a test on the host
/// can check each path against the schema:
///
///     manifest.string("executorch.file")
///     manifest.count("onnx_training.inputs[]")
///     manifest.string("onnx_training.inputs[].name", i)        // `[]`: the next Int argument indexes
///     manifest.string("coreml.compute_units{}", "text_decoder")  // `{}`: the next String argument keys
///     manifest.keys("executorch.methods{}")
///
/// A path ending in `[]` or `{}` with no argument left names the array or map itself (for
/// `count`, `keys`, `strings`, ...). Errors name manifest.json and the concrete path
/// (`onnx_training.inputs[2].name`).
public struct Manifest {
    public static let fileName = "manifest.json"

    /// The bundle directory; file names in the manifest are relative to it
    /// (`manifest.directory.appendingPathComponent(name)`).
    public let directory: URL
    private let root: [String: Any]

    private init(root: [String: Any], directory: URL) {
        self.root = root
        self.directory = directory
    }

    /// Reads `directory/manifest.json`, checks its format and version, and verifies every file it
    /// lists with `verifier` (size and SHA-256, as `mobilepeft bundle check` does; see BundleVerifier)
    /// before anything is loaded from the bundle.
    public static func load(directory: URL, verifier: BundleVerifier = BundleVerifier()) throws -> Manifest {
        let url = directory.appendingPathComponent(fileName)
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw MobilePEFTError("\(fileName) not found in \(directory.path): pick a mobilepeft bundle folder")
        }
        let manifest = try parse(data, directory: directory)
        try verifier.verify(manifest)
        return manifest
    }

    /// Parses manifest JSON (no file checks); `directory` resolves the file names it lists.
    public static func parse(_ data: Data, directory: URL) throws -> Manifest {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw MobilePEFTError("\(fileName) in \(directory.path) is not valid JSON (\(error.localizedDescription))")
        }
        guard let root = object as? [String: Any] else {
            throw MobilePEFTError("\(fileName) in \(directory.path) is not a JSON object")
        }
        let manifest = Manifest(root: root, directory: directory)
        let format = try manifest.string("format")
        guard format == "mobilepeft-bundle" else {
            throw MobilePEFTError("\(fileName): format is \"\(format)\", expected \"mobilepeft-bundle\"")
        }
        let version = try manifest.int("manifest_version")
        guard version == 1 else {
            throw MobilePEFTError("\(fileName): manifest_version \(version) is not supported by this app (it reads 1)")
        }
        return manifest
    }

    // MARK: - Typed reads

    public func string(_ path: String, _ args: Any...) throws -> String {
        let (value, at) = try resolve(path, args)
        guard let text = value as? String else { throw typeError(at, "a string", value) }
        return text
    }

    public func int(_ path: String, _ args: Any...) throws -> Int {
        let (value, at) = try resolve(path, args)
        return try Manifest.asInt(value, at)
    }

    public func double(_ path: String, _ args: Any...) throws -> Double {
        let (value, at) = try resolve(path, args)
        return try Manifest.asDouble(value, at)
    }

    public func bool(_ path: String, _ args: Any...) throws -> Bool {
        let (value, at) = try resolve(path, args)
        guard let number = value as? NSNumber, Manifest.isBoolean(number) else { throw typeError(at, "true or false", value) }
        return number.boolValue
    }

    public func strings(_ path: String, _ args: Any...) throws -> [String] {
        let (value, at) = try resolve(path, args)
        guard let items = value as? [Any] else { throw typeError(at, "an array of strings", value) }
        return try items.enumerated().map { index, item in
            guard let text = item as? String else { throw typeError("\(at)[\(index)]", "a string", item) }
            return text
        }
    }

    public func ints(_ path: String, _ args: Any...) throws -> [Int] {
        let (value, at) = try resolve(path, args)
        guard let items = value as? [Any] else { throw typeError(at, "an array of integers", value) }
        return try items.enumerated().map { index, item in try Manifest.asInt(item, "\(at)[\(index)]") }
    }

    public func doubles(_ path: String, _ args: Any...) throws -> [Double] {
        let (value, at) = try resolve(path, args)
        guard let items = value as? [Any] else { throw typeError(at, "an array of numbers", value) }
        return try items.enumerated().map { index, item in try Manifest.asDouble(item, "\(at)[\(index)]") }
    }

    /// Items of an array, or entries of a map.
    public func count(_ path: String, _ args: Any...) throws -> Int {
        let (value, at) = try resolve(path, args)
        if let items = value as? [Any] { return items.count }
        if let map = value as? [String: Any] { return map.count }
        throw typeError(at, "an array or an object", value)
    }

    /// Whether the path exists and is not null (a missing optional section is no error).
    public func has(_ path: String, _ args: Any...) -> Bool {
        guard let found = try? resolve(path, args) else { return false }
        return !(found.0 is NSNull)
    }

    /// The keys of a map, sorted.
    public func keys(_ path: String, _ args: Any...) throws -> [String] {
        let (value, at) = try resolve(path, args)
        guard let map = value as? [String: Any] else { throw typeError(at, "an object", value) }
        return map.keys.sorted()
    }

    // MARK: - Path resolution

    /// Walks `path`; returns the value and the concrete path it was found at (for messages).
    private func resolve(_ path: String, _ args: [Any]) throws -> (Any, String) {
        var node: Any = root
        var at = ""
        var remaining = args[...]
        let segments = path.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        for (position, segment) in segments.enumerated() {
            let isLast = position == segments.count - 1
            if segment.hasSuffix("[]") {
                let name = String(segment.dropLast(2))
                node = try member(node, name, &at)
                guard let items = node as? [Any] else { throw typeError(at, "an array", node) }
                if isLast && remaining.isEmpty { break }
                guard let index = remaining.popFirst() as? Int else {
                    throw MobilePEFTError("\(Manifest.fileName): \(at)[] needs an integer index (reading \(path))")
                }
                guard items.indices.contains(index) else {
                    throw MobilePEFTError("\(Manifest.fileName): \(at)[\(index)] is out of range (\(items.count) items)")
                }
                node = items[index]
                at += "[\(index)]"
            } else if segment.hasSuffix("{}") {
                let name = String(segment.dropLast(2))
                node = try member(node, name, &at)
                guard let map = node as? [String: Any] else { throw typeError(at, "an object", node) }
                if isLast && remaining.isEmpty { break }
                guard let key = remaining.popFirst() as? String else {
                    throw MobilePEFTError("\(Manifest.fileName): \(at){} needs a string key (reading \(path))")
                }
                guard let value = map[key] else {
                    throw MobilePEFTError("\(Manifest.fileName): \(at) has no entry \"\(key)\"")
                }
                node = value
                at += "{\(key)}"
            } else {
                node = try member(node, segment, &at)
            }
        }
        guard remaining.isEmpty else {
            throw MobilePEFTError("\(Manifest.fileName): too many arguments for \(path)")
        }
        return (node, at)
    }

    private func member(_ node: Any, _ name: String, _ at: inout String) throws -> Any {
        let parent = at
        at = at.isEmpty ? name : "\(at).\(name)"
        guard let object = node as? [String: Any] else {
            throw typeError(parent.isEmpty ? "the root" : parent, "an object", node)
        }
        guard let value = object[name] else {
            throw MobilePEFTError("\(Manifest.fileName): \(at) is missing")
        }
        return value
    }

    private func typeError(_ at: String, _ expected: String, _ value: Any) -> MobilePEFTError {
        MobilePEFTError("\(Manifest.fileName): \(at) should be \(expected), found \(Manifest.describe(value))")
    }

    private static func asInt(_ value: Any, _ at: String) throws -> Int {
        guard let number = value as? NSNumber, !isBoolean(number),
              number.doubleValue == number.doubleValue.rounded(), abs(number.doubleValue) < 9.0e15 else {
            throw MobilePEFTError("\(fileName): \(at) should be an integer, found \(describe(value))")
        }
        return number.intValue
    }

    private static func asDouble(_ value: Any, _ at: String) throws -> Double {
        guard let number = value as? NSNumber, !isBoolean(number) else {
            throw MobilePEFTError("\(fileName): \(at) should be a number, found \(describe(value))")
        }
        return number.doubleValue
    }

    private static func isBoolean(_ number: NSNumber) -> Bool {
        CFGetTypeID(number as CFTypeRef) == CFBooleanGetTypeID()
    }

    private static func describe(_ value: Any) -> String {
        switch value {
        case is NSNull: return "null"
        case let text as String: return "the string \"\(text.prefix(40))\""
        case let number as NSNumber: return isBoolean(number) ? (number.boolValue ? "true" : "false") : "the number \(number)"
        case let items as [Any]: return "an array of \(items.count)"
        case is [String: Any]: return "an object"
        default: return "\(type(of: value))"
        }
    }
}
