import Foundation

/// Byte-exact text helpers matching Python's `str.split(sep)` and `str.strip()`, which the
/// template code on the host uses (Swift's own string comparison applies Unicode equivalence).
enum TextSplit {
    /// `text.split(separator)` in Python: every occurrence, empty parts kept.
    static func split(_ text: String, on separator: String) -> [String] {
        let bytes = Array(text.utf8)
        let sep = Array(separator.utf8)
        guard !sep.isEmpty, bytes.count >= sep.count else { return [text] }
        var parts: [String] = []
        var start = 0
        var i = 0
        while i + sep.count <= bytes.count {
            if bytes[i..<(i + sep.count)].elementsEqual(sep) {
                parts.append(String(decoding: bytes[start..<i], as: UTF8.self))
                i += sep.count
                start = i
            } else {
                i += 1
            }
        }
        parts.append(String(decoding: bytes[start...], as: UTF8.self))
        return parts
    }

    /// Python's whitespace (`str.isspace`): what `str.strip()` removes at both ends.
    static let pythonWhitespace: CharacterSet = {
        var set = CharacterSet(charactersIn: "\t\n\u{0B}\u{0C}\r\u{1C}\u{1D}\u{1E}\u{1F} \u{85}\u{A0}\u{1680}\u{2028}\u{2029}\u{202F}\u{205F}\u{3000}")
        let low: Unicode.Scalar = "\u{2000}"
        let high: Unicode.Scalar = "\u{200A}"
        set.insert(charactersIn: low...high)
        return set
    }()

    static func pythonStrip(_ text: String) -> String {
        text.trimmingCharacters(in: pythonWhitespace)
    }
}
