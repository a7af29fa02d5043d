import Foundation

/// The parts of a SentencePiece `tokenizer.model` (a serialised `ModelProto`) that encoding and
/// decoding need.
///
/// ModelProto: 1 pieces (repeated SentencePiece{1 piece, 2 score float, 3 type}), 2 trainer_spec,
/// 3 normalizer_spec. TrainerSpec: 3 model_type (1 UNIGRAM, 2 BPE), 24 treat_whitespace_as_suffix,
/// 35 byte_fallback. NormalizerSpec: 1 name, 2 precompiled_charsmap,
/// 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces (the last three default true).
struct SentencePieceModelFile {
    enum PieceType: UInt64 {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    struct Piece {
        let bytes: [UInt8]
        let score: Float
        let type: PieceType
    }

    static let bpeModelType: UInt64 = 2

    var pieces: [Piece] = []
    var modelType: UInt64 = 1
    var treatWhitespaceAsSuffix = false
    var byteFallback = false
    var normalizerName = ""
    var hasCharsmap = false
    var addDummyPrefix = true
    var removeExtraWhitespaces = true
    var escapeWhitespaces = true

    init(bytes: [UInt8], what: String) throws {
        var reader = ProtobufReader(bytes, what: what)
        while !reader.isAtEnd {
            let field = try reader.nextField()
            switch (field.number, field.wireType) {
            case (1, .lengthDelimited):
                var message = try reader.message()
                let piece = try SentencePieceModelFile.piece(&message, index: pieces.count, what: what)
                pieces.append(piece)
            case (2, .lengthDelimited):
                var message = try reader.message()
                try readTrainerSpec(&message)
            case (3, .lengthDelimited):
                var message = try reader.message()
                try readNormalizerSpec(&message)
            default:
                try reader.skip(field.wireType)
            }
        }
        guard !pieces.isEmpty else { throw MobilePEFTError("\(what) holds no vocabulary pieces") }
    }

    private static func piece(_ reader: inout ProtobufReader, index: Int, what: String) throws -> Piece {
        var text = ""
        var score: Float = 0
        var type = PieceType.normal
        while !reader.isAtEnd {
            let field = try reader.nextField()
            switch (field.number, field.wireType) {
            case (1, .lengthDelimited): text = try reader.string()
            case (2, .fixed32): score = try reader.float32()
            case (3, .varint):
                let raw = try reader.varint()
                guard let known = PieceType(rawValue: raw) else {
                    throw MobilePEFTError("\(what): piece \(index) has unknown type \(raw)")
                }
                type = known
            default: try reader.skip(field.wireType)
            }
        }
        return Piece(bytes: Array(text.utf8), score: score, type: type)
    }

    private mutating func readTrainerSpec(_ reader: inout ProtobufReader) throws {
        while !reader.isAtEnd {
            let field = try reader.nextField()
            switch (field.number, field.wireType) {
            case (3, .varint): modelType = try reader.varint()
            case (24, .varint): treatWhitespaceAsSuffix = try reader.varint() != 0
            case (35, .varint): byteFallback = try reader.varint() != 0
            default: try reader.skip(field.wireType)
            }
        }
    }

    private mutating func readNormalizerSpec(_ reader: inout ProtobufReader) throws {
        while !reader.isAtEnd {
            let field = try reader.nextField()
            switch (field.number, field.wireType) {
            case (1, .lengthDelimited): normalizerName = try reader.string()
            case (2, .lengthDelimited):
                let charsmap = try reader.lengthDelimited()
                hasCharsmap = !charsmap.isEmpty
            case (3, .varint): addDummyPrefix = try reader.varint() != 0
            case (4, .varint): removeExtraWhitespaces = try reader.varint() != 0
            case (5, .varint): escapeWhitespaces = try reader.varint() != 0
            default: try reader.skip(field.wireType)
            }
        }
    }
}
