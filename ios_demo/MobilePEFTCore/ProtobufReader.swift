import Foundation

/// A minimal reader of the protobuf wire format: enough to walk a message's fields, read varints,
/// 32-bit floats and length-delimited bytes, and skip whatever it does not need.
struct ProtobufReader {
    enum WireType: UInt64 {
        case varint = 0, fixed64 = 1, lengthDelimited = 2, startGroup = 3, endGroup = 4, fixed32 = 5
    }

    struct Field {
        let number: UInt64
        let wireType: WireType
    }

    private let bytes: [UInt8]
    private var offset: Int
    private let end: Int
    private let what: String

    /// Reads `bytes[range]`; `what` names the file in errors.
    init(_ bytes: [UInt8], range: Range<Int>? = nil, what: String) {
        self.bytes = bytes
        let bounds = range ?? 0..<bytes.count
        self.offset = bounds.lowerBound
        self.end = bounds.upperBound
        self.what = what
    }

    var isAtEnd: Bool { offset >= end }

    mutating func nextField() throws -> Field {
        let key = try varint()
        guard let wireType = WireType(rawValue: key & 7) else {
            throw corrupt("unknown wire type \(key & 7)")
        }
        return Field(number: key >> 3, wireType: wireType)
    }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < end else { throw corrupt("truncated varint") }
            let byte = bytes[offset]
            offset += 1
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            guard shift < 64 else { throw corrupt("varint longer than 10 bytes") }
        }
    }

    mutating func float32() throws -> Float {
        guard offset + 4 <= end else { throw corrupt("truncated float") }
        let bits = UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8
            | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
        offset += 4
        return Float(bitPattern: bits)
    }

    /// The byte range of a length-delimited field (a string, bytes or an embedded message).
    mutating func lengthDelimited() throws -> Range<Int> {
        let raw = try varint()
        guard raw <= UInt64(end - offset) else { throw corrupt("length-delimited field runs past the end") }
        let length = Int(raw)
        let range = offset..<(offset + length)
        offset += length
        return range
    }

    mutating func string() throws -> String {
        let range = try lengthDelimited()
        guard let text = String(bytes: bytes[range], encoding: .utf8) else { throw corrupt("string field is not UTF-8") }
        return text
    }

    /// A reader over an embedded message.
    mutating func message() throws -> ProtobufReader {
        let range = try lengthDelimited()
        return ProtobufReader(bytes, range: range, what: what)
    }

    mutating func skip(_ wireType: WireType) throws {
        switch wireType {
        case .varint: _ = try varint()
        case .fixed64: try advance(8)
        case .fixed32: try advance(4)
        case .lengthDelimited: _ = try lengthDelimited()
        case .startGroup, .endGroup: throw corrupt("groups are not used by SentencePiece models")
        }
    }

    private mutating func advance(_ count: Int) throws {
        guard offset + count <= end else { throw corrupt("truncated field") }
        offset += count
    }

    private func corrupt(_ detail: String) -> MobilePEFTError {
        MobilePEFTError("\(what) is not a valid SentencePiece model (\(detail) at byte \(offset))")
    }
}
