import Foundation

/// One conversation turn a user wrote: a question (with `<image>` when a photo goes with it) and
/// the answer the model should learn.
public struct ConversationTurn {
    public let question: String
    public let answer: String

    public init(question: String, answer: String) {
        self.question = question
        self.answer = answer
    }
}

/// One row of a training batch: `seqLen` positions, right-padded, labels already shifted by one
/// (`labels[t]` is the id position `t` must predict, `ignoreIndex` where nothing is supervised).
public struct EncodedRow {
    public let inputIds: [Int64]
    public let attentionMask: [Int64]
    public let labels: [Int64]
    public let hasImage: Bool
    public let ignoreIndex: Int64

    public var supervisedCount: Int { labels.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) } }
}

/// The v1 conversation template, tokenised segment by segment exactly as
/// `mobilepeft.data.template.tokenize_conversation` and `mobilepeft.export.ort.batch.encode_sample`
/// do, with the template strings and ids taken from the manifest's `prompt` and `tokenizer`
/// sections:
///
/// * first turn: BOS + `first_turn` with `{system}` and `{question}` filled, the question's
///   `<image>` moved to its front and encoded as one `image_token_id` slot; later turns:
///   `next_turn`, encoded as plain text;
/// * each answer: its ids + EOS, supervised; prompts, BOS and the image slot are not;
/// * too long for `maxLength` (image slot counted as `num_image_tokens`): trailing turns are
///   dropped; a first answer is cut as long as one of its tokens fits.
public struct ConversationTemplate {
    public let tokenizer: SentencePieceTokenizer
    public let system: String
    public let firstTurn: String
    public let nextTurn: String
    public let stop: String
    public let imagePlaceholder: String
    public let imageTokenId: Int
    public let bosId: Int
    public let eosId: Int
    public let padId: Int
    public let numImageTokens: Int
    public let ignoreIndex: Int

    public init(manifest: Manifest, tokenizer: SentencePieceTokenizer, ignoreIndex: Int = -100) throws {
        let template = try manifest.string("prompt.template")
        guard template == "v1" else {
            throw MobilePEFTError("\(Manifest.fileName): prompt.template is \"\(template)\"; this app implements \"v1\"")
        }
        self.tokenizer = tokenizer
        self.system = try manifest.string("prompt.system")
        self.firstTurn = try manifest.string("prompt.first_turn")
        self.nextTurn = try manifest.string("prompt.next_turn")
        self.stop = try manifest.string("prompt.stop")
        self.imagePlaceholder = try manifest.string("prompt.image_placeholder")
        self.imageTokenId = try manifest.int("prompt.image_token_id")
        self.bosId = try manifest.int("tokenizer.bos_id")
        self.eosId = try manifest.int("tokenizer.eos_id")
        self.padId = try manifest.int("tokenizer.pad_id")
        self.numImageTokens = try manifest.int("model.num_image_tokens")
        self.ignoreIndex = ignoreIndex
    }

    /// `question` with a photo: the placeholder in front, as the model was trained.
    public func withImage(_ question: String) -> String {
        imagePlaceholder + "\n" + question
    }

    /// BOS + the first-turn prompt the model answers (one image slot at most).
    public func promptIds(question: String) throws -> [Int] {
        let occurrences = TextSplit.split(question, on: imagePlaceholder).count - 1
        guard occurrences <= 1 else {
            throw MobilePEFTError("the question contains \"\(imagePlaceholder)\" \(occurrences) times; use it at most once (one image per conversation)")
        }
        let text = ConversationTemplate.fill(firstTurn, ["system": system, "question": moveImageToFront(question)])
        return [bosId] + encodeWithImage(text)
    }

    /// (input ids with one image slot, labels) of a conversation, as `tokenize_conversation`.
    public func tokenize(_ turns: [ConversationTurn], maxLength: Int?) throws -> (ids: [Int], labels: [Int]) {
        guard !turns.isEmpty else { throw MobilePEFTError("a conversation needs at least one question and answer") }
        var ids: [Int] = []
        var labels: [Int] = []
        for (k, turn) in turns.enumerated() {
            let prompt = try k == 0
                ? promptIds(question: turn.question)
                : tokenizer.encode(ConversationTemplate.fill(nextTurn, ["question": turn.question]))
            var reply = tokenizer.encode(turn.answer) + [eosId]
            if let maxLength, splicedLength(ids + prompt + reply) > maxLength {
                if k > 0 { break }
                let promptLength = splicedLength(prompt)
                if promptLength + 1 > maxLength {
                    throw MobilePEFTError("sequence longer than max_seq_len (\(splicedLength(prompt + reply)) > \(maxLength)): the first question alone takes \(promptLength) tokens (image tokens included), leaving no room for the answer; shorten the question")
                }
                reply = Array(reply.prefix(maxLength - promptLength))
            }
            ids += prompt + reply
            labels += [Int](repeating: ignoreIndex, count: prompt.count) + reply
        }
        return (ids, labels)
    }

    /// One padded, label-shifted training row of `seqLen` positions, as `encode_sample`.
    public func encodeRow(_ turns: [ConversationTurn], seqLen: Int) throws -> EncodedRow {
        let (ids, labels) = try tokenize(turns, maxLength: seqLen)
        var wideIds: [Int] = []
        var wideLabels: [Int] = []
        for (token, label) in zip(ids, labels) {
            if token == imageTokenId {
                wideIds += [Int](repeating: imageTokenId, count: numImageTokens)
                wideLabels += [Int](repeating: ignoreIndex, count: numImageTokens)
            } else {
                wideIds.append(token)
                wideLabels.append(label)
            }
        }
        let n = wideIds.count
        var inputIds = [Int64](repeating: Int64(padId), count: seqLen)
        var mask = [Int64](repeating: 0, count: seqLen)
        var shifted = [Int64](repeating: Int64(ignoreIndex), count: seqLen)
        for t in 0..<n {
            inputIds[t] = Int64(wideIds[t])
            mask[t] = 1
            if t + 1 < n { shifted[t] = Int64(wideLabels[t + 1]) }
        }
        return EncodedRow(inputIds: inputIds, attentionMask: mask, labels: shifted,
                          hasImage: ids.contains(imageTokenId), ignoreIndex: Int64(ignoreIndex))
    }

    /// Ids with each image slot widened to `num_image_tokens` positions (the decoder's layout).
    public func widen(_ ids: [Int]) -> [Int] {
        ids.flatMap { $0 == imageTokenId ? [Int](repeating: imageTokenId, count: numImageTokens) : [$0] }
    }

    /// Sequence length once every image slot counts `num_image_tokens` positions.
    public func splicedLength(_ ids: [Int]) -> Int {
        ids.count + ids.reduce(0) { $0 + ($1 == imageTokenId ? 1 : 0) } * (numImageTokens - 1)
    }

    /// `<image>` first, as LLaVA v1 writes it; text without a placeholder is unchanged.
    func moveImageToFront(_ question: String) -> String {
        let parts = TextSplit.split(question, on: imagePlaceholder)
        guard parts.count > 1 else { return question }
        return imagePlaceholder + "\n" + TextSplit.pythonStrip(parts.joined())
    }

    /// Encodes `text` with every placeholder as one image slot (`encode_with_image`).
    func encodeWithImage(_ text: String) -> [Int] {
        var ids: [Int] = []
        for (i, chunk) in TextSplit.split(text, on: imagePlaceholder).enumerated() {
            if i > 0 { ids.append(imageTokenId) }
            if !chunk.isEmpty { ids += tokenizer.encode(chunk) }
        }
        return ids
    }

    /// Replaces `{name}` fields in one pass (a value is never re-scanned); other braces stay.
    static func fill(_ template: String, _ values: [String: String]) -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            let afterOpen = rest.index(after: open)
            if let close = rest[afterOpen...].firstIndex(of: "}"), let value = values[String(rest[afterOpen..<close])] {
                out += value
                rest = rest[rest.index(after: close)...]
            } else {
                out += "{"
                rest = rest[afterOpen...]
            }
        }
        return out + rest
    }
}
