import Foundation

/// LLaMA's tokenizer: SentencePiece BPE with the identity normaliser and byte fallback, encoding
/// and decoding exactly as `sentencepiece.SentencePieceProcessor.EncodeAsIds` / `DecodeIds` do
/// (the ids `mobilepeft.models.tokenizer.Tokenizer` gives; `encode` adds no BOS/EOS).
///
/// Encoding: the text's UTF-8 bytes, `▁` (U+2581) prepended when `add_dummy_prefix` and every
/// space replaced by `▁`; split into Unicode scalars (a user-defined piece at a position is one
/// frozen symbol); then the adjacent pair whose concatenation is a vocabulary piece (NORMAL,
/// USER_DEFINED or UNUSED) with the highest score is merged, the leftmost on ties, until none is
/// left. A symbol that is no piece becomes its UTF-8 bytes as `<0xXX>` pieces (byte fallback) or
/// the unknown id. Strings are compared byte-wise, as SentencePiece does (no Unicode equivalence).
public final class SentencePieceTokenizer {
    public let vocabSize: Int
    public let unkId: Int

    private let pieces: [SentencePieceModelFile.Piece]
    /// Pieces merges may produce (NORMAL, USER_DEFINED, UNUSED), first id of each.
    private let mergeable: [[UInt8]: Int]
    /// CONTROL, UNKNOWN and BYTE pieces, looked up before `mergeable` (SentencePiece's PieceToId).
    private let reserved: [[UInt8]: Int]
    /// User-defined pieces by first byte, longest first.
    private let userDefined: [UInt8: [[UInt8]]]
    private let byteIds: [Int]
    private let addDummyPrefix: Bool
    private let removeExtraWhitespaces: Bool
    private let escapeWhitespaces: Bool
    private let byteFallback: Bool

    private static let spaceSymbol: [UInt8] = Array("\u{2581}".utf8)

    public convenience init(contentsOf url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw MobilePEFTError("cannot read the tokenizer \(url.path) (\(error.localizedDescription))")
        }
        try self.init(modelBytes: [UInt8](data), name: url.lastPathComponent)
    }

    public init(modelBytes: [UInt8], name: String) throws {
        let model = try SentencePieceModelFile(bytes: modelBytes, what: name)
        guard model.modelType == SentencePieceModelFile.bpeModelType else {
            throw MobilePEFTError("\(name) is a SentencePiece model of type \(model.modelType); this app implements BPE (type 2), which LLaMA/MobileVLM use")
        }
        guard model.normalizerName == "identity", !model.hasCharsmap else {
            throw MobilePEFTError("\(name) uses the normaliser \"\(model.normalizerName)\"; this app implements LLaMA's \"identity\" normaliser only")
        }
        guard !model.treatWhitespaceAsSuffix else {
            throw MobilePEFTError("\(name) sets treat_whitespace_as_suffix, which LLaMA tokenizers do not; not supported")
        }
        var mergeable: [[UInt8]: Int] = [:]
        var reserved: [[UInt8]: Int] = [:]
        var userDefined: [UInt8: [[UInt8]]] = [:]
        var byteIds = [Int](repeating: -1, count: 256)
        var unkId = -1
        for (id, piece) in model.pieces.enumerated() {
            switch piece.type {
            case .normal, .userDefined, .unused:
                guard mergeable[piece.bytes] == nil else {
                    throw MobilePEFTError("\(name): piece \(id) is defined twice")
                }
                mergeable[piece.bytes] = id
                if piece.type == .userDefined, let first = piece.bytes.first {
                    userDefined[first, default: []].append(piece.bytes)
                }
            case .unknown, .control, .byte:
                guard reserved[piece.bytes] == nil else {
                    throw MobilePEFTError("\(name): piece \(id) is defined twice")
                }
                reserved[piece.bytes] = id
                if piece.type == .unknown { unkId = id }
                if piece.type == .byte, let value = SentencePieceTokenizer.byteValue(piece.bytes) {
                    byteIds[Int(value)] = id
                }
            }
        }
        guard unkId >= 0 else { throw MobilePEFTError("\(name) has no unknown piece") }
        self.vocabSize = model.pieces.count
        self.unkId = unkId
        self.pieces = model.pieces
        self.mergeable = mergeable
        self.reserved = reserved
        self.userDefined = userDefined.mapValues { $0.sorted { $0.count > $1.count } }
        self.byteIds = byteIds
        self.addDummyPrefix = model.addDummyPrefix
        self.removeExtraWhitespaces = model.removeExtraWhitespaces
        self.escapeWhitespaces = model.escapeWhitespaces
        self.byteFallback = model.byteFallback
    }

    public func isControl(_ id: Int) -> Bool {
        id >= 0 && id < pieces.count && pieces[id].type == .control
    }

    // MARK: - Encode

    public func encode(_ text: String) -> [Int] {
        let normalized = normalize(text)
        if normalized.isEmpty { return [] }
        var symbols = initialSymbols(normalized)
        var revMerge: [[UInt8]: ([UInt8], [UInt8])] = [:]
        // pairScores[i]: score of merging symbols[i] and symbols[i+1], nil when that is no piece.
        var pairScores: [Float?] = []
        for i in 0..<max(symbols.count - 1, 0) {
            pairScores.append(pairScore(symbols, i, normalized, &revMerge))
        }
        while let best = bestPair(pairScores) {
            symbols[best] = Symbol(start: symbols[best].start, end: symbols[best + 1].end, frozen: false)
            symbols.remove(at: best + 1)
            pairScores.remove(at: best)
            if best > 0 { pairScores[best - 1] = pairScore(symbols, best - 1, normalized, &revMerge) }
            if best < pairScores.count { pairScores[best] = pairScore(symbols, best, normalized, &revMerge) }
        }
        var ids: [Int] = []
        for symbol in symbols {
            resegment(Array(normalized[symbol.start..<symbol.end]), revMerge, &ids)
        }
        return ids
    }

    private struct Symbol {
        let start: Int
        let end: Int
        let frozen: Bool
    }

    /// SentencePiece's identity normaliser: optional whitespace cleanup, the dummy prefix, spaces
    /// escaped as `▁`. Empty text stays empty (no prefix).
    private func normalize(_ text: String) -> [UInt8] {
        var input = ArraySlice(text.utf8)
        if removeExtraWhitespaces {
            while input.first == 0x20 { input.removeFirst() }
        }
        if input.isEmpty { return [] }
        let space = escapeWhitespaces ? SentencePieceTokenizer.spaceSymbol : [0x20]
        var out: [UInt8] = addDummyPrefix ? space : []
        var previousWasSpace = removeExtraWhitespaces
        for byte in input {
            if byte == 0x20 {
                // Runs of spaces collapse only under remove_extra_whitespaces.
                if removeExtraWhitespaces && previousWasSpace { continue }
                out += space
                previousWasSpace = true
            } else {
                out.append(byte)
                // UTF-8 continuation bytes are never 0x20: byte-wise equals character-wise here.
                previousWasSpace = false
            }
        }
        if removeExtraWhitespaces {
            while out.count >= space.count, Array(out.suffix(space.count)) == space {
                out.removeLast(space.count)
            }
        }
        return out
    }

    private func initialSymbols(_ bytes: [UInt8]) -> [Symbol] {
        var symbols: [Symbol] = []
        var i = 0
        while i < bytes.count {
            if let length = userDefinedMatch(bytes, at: i) {
                symbols.append(Symbol(start: i, end: i + length, frozen: true))
                i += length
            } else {
                let length = min(SentencePieceTokenizer.utf8Length(bytes[i]), bytes.count - i)
                symbols.append(Symbol(start: i, end: i + length, frozen: false))
                i += length
            }
        }
        return symbols
    }

    private func userDefinedMatch(_ bytes: [UInt8], at i: Int) -> Int? {
        guard let candidates = userDefined[bytes[i]] else { return nil }
        for candidate in candidates where i + candidate.count <= bytes.count {
            if bytes[i..<(i + candidate.count)].elementsEqual(candidate) { return candidate.count }
        }
        return nil
    }

    private func pairScore(_ symbols: [Symbol], _ i: Int, _ bytes: [UInt8],
                           _ revMerge: inout [[UInt8]: ([UInt8], [UInt8])]) -> Float? {
        let left = symbols[i], right = symbols[i + 1]
        if left.frozen || right.frozen { return nil }
        let merged = Array(bytes[left.start..<right.end])
        guard let id = mergeable[merged] else { return nil }
        if pieces[id].type == .unused {
            revMerge[merged] = (Array(bytes[left.start..<left.end]), Array(bytes[right.start..<right.end]))
        }
        return pieces[id].score
    }

    /// Highest score, leftmost on ties.
    private func bestPair(_ scores: [Float?]) -> Int? {
        var best: Int?
        var bestScore = -Float.infinity
        for (i, score) in scores.enumerated() {
            if let score, best == nil || score > bestScore {
                best = i
                bestScore = score
            }
        }
        return best
    }

    /// An UNUSED piece produced by a merge is split back into the pieces it was made of; a
    /// symbol that is no piece becomes byte pieces (byte fallback) or the unknown id.
    private func resegment(_ piece: [UInt8], _ revMerge: [[UInt8]: ([UInt8], [UInt8])], _ ids: inout [Int]) {
        let id = reserved[piece] ?? mergeable[piece] ?? unkId
        if pieces[id].type == .unused, let parts = revMerge[piece] {
            resegment(parts.0, revMerge, &ids)
            resegment(parts.1, revMerge, &ids)
            return
        }
        if id == unkId && byteFallback {
            for byte in piece {
                let byteId = byteIds[Int(byte)]
                ids.append(byteId >= 0 ? byteId : unkId)
            }
        } else {
            ids.append(id)
        }
    }

    // MARK: - Decode

    /// Text of `ids` as `Tokenizer.decode` gives it: negative, control and unknown ids skipped,
    /// byte pieces joined into UTF-8, `▁` back to spaces, the dummy prefix's space removed.
    public func decode(_ ids: [Int]) -> String {
        var text = ""
        var pendingBytes: [UInt8] = []
        var atStart = true
        func flushBytes() {
            guard !pendingBytes.isEmpty else { return }
            text += SentencePieceTokenizer.decodeBytes(pendingBytes)
            pendingBytes.removeAll()
            atStart = false
        }
        for id in ids where id >= 0 && id < pieces.count {
            let piece = pieces[id]
            switch piece.type {
            case .control, .unknown:
                continue
            case .byte:
                if let value = SentencePieceTokenizer.byteValue(piece.bytes) { pendingBytes.append(value) }
            case .normal, .userDefined, .unused:
                flushBytes()
                var bytes = ArraySlice(piece.bytes)
                // The dummy prefix's space: stripped from the first piece that has one. With
                // remove_extra_whitespaces every leading space piece goes, until text appears.
                var consumedPrefix = false
                if atStart && (addDummyPrefix || removeExtraWhitespaces)
                    && bytes.starts(with: SentencePieceTokenizer.spaceSymbol) {
                    bytes = bytes.dropFirst(SentencePieceTokenizer.spaceSymbol.count)
                    consumedPrefix = !removeExtraWhitespaces
                }
                let surface = String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\u{2581}", with: " ")
                text += surface
                if !surface.isEmpty || consumedPrefix { atStart = false }
            }
        }
        flushBytes()
        return text
    }

    // MARK: - Helpers

    /// Bytes in a UTF-8 sequence from its lead byte (1 for a stray continuation byte).
    private static func utf8Length(_ lead: UInt8) -> Int {
        switch lead {
        case 0xF0...0xF7: return 4
        case 0xE0...0xEF: return 3
        case 0xC0...0xDF: return 2
        default: return 1
        }
    }

    /// Byte pieces as text, SentencePiece's way: each byte of an invalid UTF-8 sequence becomes
    /// one U+FFFD (Swift's own decoding would replace a whole truncated sequence by one).
    private static func decodeBytes(_ bytes: [UInt8]) -> String {
        var text = ""
        var i = 0
        while i < bytes.count {
            let length = utf8Length(bytes[i])
            if i + length <= bytes.count, let character = String(bytes: bytes[i..<(i + length)], encoding: .utf8) {
                text += character
                i += length
            } else {
                text += "\u{FFFD}"
                i += 1
            }
        }
        return text
    }

    /// The byte of a `<0xXX>` piece.
    private static func byteValue(_ piece: [UInt8]) -> UInt8? {
        guard piece.count == 6, let text = String(bytes: piece, encoding: .ascii),
              text.hasPrefix("<0x"), text.hasSuffix(">") else { return nil }
        return UInt8(text.dropFirst(3).dropLast(), radix: 16)
    }
}
