package dev.mobilepeft.core

/** A model with full-sequence logits ([1, seq_len, vocab]) for the graph inputs: the exported inference model. */
interface LogitsModel {
    fun logits(inputs: Map<String, TensorData>): FloatArray
    fun close()
}

/** Answers a question about a photo (before/after comparison). */
interface Answerer {
    fun answer(imageTokens: FloatArray?, question: String): String
}

/** Greedy answers from a full-sequence logits model (the exported inference model), stopping at EOS/stop. */
class GreedyAnswerer(
    private val spec: BundleSpec,
    private val model: LogitsModel,
    private val tokenizer: TextTokenizer,
    private val maxNewTokens: Int = 32
) : Answerer {
    private val section = spec.requireOnnxTraining()
    private val conversation = ConversationEncoder.forBundle(spec, tokenizer)
    private val batches = BatchBuilder(section)

    override fun answer(imageTokens: FloatArray?, question: String): String {
        val q = if (imageTokens != null) conversation.questionWithImage(question) else question
        val ids = ArrayList(conversation.widen(conversation.promptIds(q)))
        val vocab = spec.model.vocabSize
        val seqLen = batches.seqLen
        val generated = ArrayList<Int>()
        while (generated.size < maxNewTokens && ids.size < seqLen) {
            val row = EncodedRow(
                LongArray(seqLen) { if (it < ids.size) ids[it].toLong() else spec.tokenizer.padId.toLong() },
                LongArray(seqLen) { if (it < ids.size) 1L else 0L },
                LongArray(seqLen) { section.ignoreIndex.toLong() }
            )
            val logits = model.logits(batches.build(listOf(row), listOf(imageTokens)))
            if (logits.size != seqLen * vocab) throw IllegalStateException("logits have ${logits.size} values, expected $seqLen x $vocab")
            val last = (ids.size - 1) * vocab
            var best = 0
            for (v in 1 until vocab) if (logits[last + v] > logits[last + best]) best = v
            if (best == spec.tokenizer.eosId) break
            generated.add(best)
            ids.add(best)
            val text = tokenizer.decode(generated.toIntArray())
            if (spec.prompt.stop.isNotEmpty() && text.endsWith(spec.prompt.stop)) {
                return text.substring(0, text.length - spec.prompt.stop.length).trim()
            }
        }
        return tokenizer.decode(generated.toIntArray()).trim()
    }
}

/**
 * A `--train-layers` bundle answers through two graphs: its frozen layers ([prefix]) map the sample inputs
 * to hidden states, and the exported inference model of the top layers ([top]) maps those to logits.
 */
class SplitLogitsModel(private val split: SplitSpec, private val prefix: DecoderPrefix, private val top: LogitsModel) : LogitsModel {
    override fun logits(inputs: Map<String, TensorData>): FloatArray {
        val mask = inputs["attention_mask"] ?: throw IllegalArgumentException("the sample inputs lack attention_mask")
        val shape = longArrayOf(mask.shape[0], mask.shape[1], split.hiddenSize.toLong())
        return top.logits(mapOf(split.output.name to TensorData.ofFloats(shape, prefix.hiddenStates(inputs)), "attention_mask" to mask))
    }

    override fun close() {
        top.close()
    }
}
