package dev.mobilepeft.core

/** A sample or prompt that cannot be tokenised as asked; the message says why and what to change. */
class ConversationError(message: String) : RuntimeException(message)

class Turn(val question: String, val answer: String)

/** One row of a training batch: [seqLen] positions, image span widened, labels already shifted. */
class EncodedRow(val inputIds: LongArray, val attentionMask: LongArray, val labels: LongArray) {
    val realTokens: Int get() = attentionMask.count { it != 0L }
    val supervisedTokens: Int get() = labels.count { it != IGNORE_INDEX.toLong() }

    companion object {
        const val IGNORE_INDEX = -100
    }
}

/**
 * The v1 conversation template, tokenised segment by segment exactly as
 * mobilepeft/data/template.py (`tokenize_conversation`, `build_prompt_ids`) and
 * mobilepeft/export/ort/batch.py (`encode_sample`) do; every template string comes from the manifest.
 */
class ConversationEncoder(
    private val tokenizer: TextTokenizer,
    private val prompt: PromptTemplate,
    private val numImageTokens: Int,
    private val bosId: Int,
    private val eosId: Int,
    private val ignoreIndex: Int = EncodedRow.IGNORE_INDEX
) {
    companion object {
        fun forBundle(spec: BundleSpec, tokenizer: TextTokenizer): ConversationEncoder = ConversationEncoder(
            tokenizer, spec.prompt, spec.model.numImageTokens, spec.tokenizer.bosId, spec.tokenizer.eosId,
            spec.onnxTraining?.ignoreIndex ?: EncodedRow.IGNORE_INDEX
        )

        /** Python's str.strip(): the characters str.isspace() accepts. */
        fun pyStrip(s: String): String {
            var a = 0
            var b = s.length
            while (a < b && isPySpace(s[a])) a++
            while (b > a && isPySpace(s[b - 1])) b--
            return s.substring(a, b)
        }

        private fun isPySpace(c: Char): Boolean {
            val v = c.toInt()
            return (v in 0x09..0x0D) || (v in 0x1C..0x20) || v == 0x85 || v == 0xA0 || v == 0x1680 ||
                (v in 0x2000..0x200A) || v == 0x2028 || v == 0x2029 || v == 0x202F || v == 0x205F || v == 0x3000
        }
    }

    private val placeholder: String get() = prompt.imagePlaceholder
    val imageTokenId: Int get() = prompt.imageTokenId

    /** "<image>\n" + the rest, as LLaVA v1 places it; text without a placeholder is unchanged. */
    fun moveImageToFront(question: String): String {
        if (question.indexOf(placeholder) < 0) return question
        return placeholder + "\n" + pyStrip(question.replace(placeholder, ""))
    }

    /** The question as asked about a photo: the placeholder first (added when the user did not type it). */
    fun questionWithImage(question: String): String =
        if (question.indexOf(placeholder) >= 0) moveImageToFront(question) else moveImageToFront(placeholder + question)

    /** `{system}` / `{question}` substituted in one left-to-right pass. */
    fun fill(template: String, question: String): String {
        val out = StringBuilder()
        var i = 0
        while (i < template.length) {
            when {
                template.startsWith("{system}", i) -> { out.append(prompt.system); i += 8 }
                template.startsWith("{question}", i) -> { out.append(question); i += 10 }
                else -> { out.append(template[i]); i++ }
            }
        }
        return out.toString()
    }

    /** [text] with each placeholder as one image slot (image_token_id). */
    fun encodeWithImage(text: String): List<Int> {
        val ids = ArrayList<Int>()
        for ((i, chunk) in text.split(placeholder).withIndex()) {
            if (i > 0) ids.add(imageTokenId)
            if (chunk.isNotEmpty()) for (id in tokenizer.encode(chunk)) ids.add(id)
        }
        return ids
    }

    /** BOS + first_turn: the prompt the model answers (the placeholder, if any, moved to the front). */
    fun promptIds(question: String): List<Int> {
        val n = countOf(question, placeholder)
        if (n > 1) throw ConversationError("the prompt contains '$placeholder' $n times; use it at most once (one image per conversation)")
        val ids = ArrayList<Int>()
        ids.add(bosId)
        ids.addAll(encodeWithImage(fill(prompt.firstTurn, moveImageToFront(question))))
        return ids
    }

    /** Length after each image slot becomes numImageTokens positions. */
    fun splicedLength(ids: List<Int>): Int = ids.size + ids.count { it == imageTokenId } * (numImageTokens - 1)

    /**
     * (input_ids, labels) of a conversation: labels are [ignoreIndex] on BOS, prompts and the image
     * slot; answers and their EOS are supervised. Too long: trailing turns are dropped, a too-long
     * first answer is cut if at least one answer token fits, otherwise it is an error.
     */
    fun tokenizeConversation(turns: List<Turn>, maxLength: Int?, sample: String = "sample"): kotlin.Pair<List<Int>, List<Int>> {
        if (turns.isEmpty()) throw ConversationError("$sample: a conversation needs at least one (question, answer) turn")
        val inputIds = ArrayList<Int>()
        val labels = ArrayList<Int>()
        for ((k, turn) in turns.withIndex()) {
            val promptPart = if (k == 0) promptIds(turn.question) else tokenizer.encode(fill(prompt.nextTurn, turn.question)).toList()
            var reply: List<Int> = tokenizer.encode(turn.answer).toList() + eosId
            if (maxLength != null && splicedLength(inputIds + promptPart + reply) > maxLength) {
                if (k > 0) break
                val promptLength = splicedLength(promptPart)
                if (promptLength + 1 > maxLength) {
                    val turnLength = splicedLength(promptPart + reply)
                    throw ConversationError("$sample: sequence longer than the bundle's sequence length ($turnLength > $maxLength): " +
                        "the first question alone takes $promptLength tokens (image tokens included), leaving no room for " +
                        "the answer; shorten the question text")
                }
                reply = reply.subList(0, maxLength - promptLength)
            }
            inputIds.addAll(promptPart)
            inputIds.addAll(reply)
            for (i in promptPart.indices) labels.add(ignoreIndex)
            labels.addAll(reply)
        }
        return kotlin.Pair(inputIds, labels)
    }

    /** One padded row of [seqLen] positions, as encode_sample builds it for the ORT training graph. */
    fun encodeSample(turns: List<Turn>, seqLen: Int, padId: Int, sample: String = "sample"): EncodedRow {
        val (ids, labels) = tokenizeConversation(turns, seqLen, sample)
        val wideIds = ArrayList<Int>()
        val wideLabels = ArrayList<Int>()
        for (i in ids.indices) {
            if (ids[i] == imageTokenId) {
                for (j in 0 until numImageTokens) {
                    wideIds.add(imageTokenId)
                    wideLabels.add(ignoreIndex)
                }
            } else {
                wideIds.add(ids[i])
                wideLabels.add(labels[i])
            }
        }
        val n = wideIds.size
        val inputIds = LongArray(seqLen) { if (it < n) wideIds[it].toLong() else padId.toLong() }
        val mask = LongArray(seqLen) { if (it < n) 1L else 0L }
        val shifted = LongArray(seqLen) { if (it < n - 1) wideLabels[it + 1].toLong() else ignoreIndex.toLong() }
        return EncodedRow(inputIds, mask, shifted)
    }

    /** A generation row: the prompt widened and right-padded to [seqLen] (for a full-sequence logits model). */
    fun widen(ids: List<Int>): List<Int> {
        val out = ArrayList<Int>()
        for (id in ids) {
            if (id == imageTokenId) for (j in 0 until numImageTokens) out.add(imageTokenId) else out.add(id)
        }
        return out
    }

    private fun countOf(s: String, sub: String): Int {
        var n = 0
        var i = s.indexOf(sub)
        while (i >= 0) {
            n++
            i = s.indexOf(sub, i + sub.length)
        }
        return n
    }
}
