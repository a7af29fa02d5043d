package dev.mobilepeft.core

import java.io.File

/**
 * One photo the user taught: its preprocessed [pixels] (what [ImageEncoder] takes), the question and
 * answer about it, and the [label] that names it in tokenisation errors.
 */
class Sample(val pixels: FloatArray, val question: String, val answer: String, val label: String)

/**
 * What the training loop reads, computed before the training session opens: each sample's encoded row and
 * the frozen graphs' output for it (its image tokens, or a `--train-layers` bundle's hidden states).
 */
class PreparedSamples(val rows: List<EncodedRow>, val features: List<FloatArray?>, val split: Boolean)

/**
 * The on-device training loop of mobilepeft/export/ort/personalize.py: samples -> rows (v1 template) + image tokens
 * (vision encoder, each photo once) [-> a `--train-layers` bundle's frozen layers, each sample once] -> named
 * inputs -> trainStep / optimizerStep / lazyResetGrad, with epoch-wise seeded shuffling, per-step timing and
 * progress. The frozen graphs run first, one at a time, so the app closes each before the training session
 * opens (docs/on-device-training.md, "Memory"). A NaN/inf loss stops training before its optimizer step and
 * keeps the last checkpoint whose parameters gave a finite loss.
 */
class Personalizer(
    private val spec: BundleSpec,
    private val tokenizer: TextTokenizer,
    private val encoder: ImageEncoder,
    private val clock: Clock = SystemClock
) {
    private val section = spec.requireOnnxTraining()
    val conversation = ConversationEncoder.forBundle(spec, tokenizer)
    val batches = BatchBuilder(section)

    fun encodeRows(samples: List<Sample>): List<EncodedRow> = samples.map { s ->
        conversation.encodeSample(listOf(Turn(conversation.questionWithImage(s.question), s.answer)), batches.seqLen,
            spec.tokenizer.padId, s.label)
    }

    fun encodeImages(samples: List<Sample>): List<FloatArray> {
        val s = spec.image.size.toLong()
        return samples.map { encoder.encode(it.pixels, longArrayOf(1, 3, s, s)) }
    }

    /**
     * The rows of [samples] and what the training graph takes beside them: [images] ([encodeImages]) for a
     * whole-decoder bundle; for a `--train-layers` bundle each row's hidden states from [prefix], run once per
     * sample here (the app then closes it: the training loop never needs it again).
     */
    fun prepare(samples: List<Sample>, images: List<FloatArray?>, prefix: DecoderPrefix?): PreparedSamples {
        if (samples.isEmpty()) throw ConversationError("add at least one photo with a question and an answer")
        require(images.size == samples.size) { "${samples.size} samples but ${images.size} image encodings" }
        val rows = encodeRows(samples)
        val split = section.split ?: return PreparedSamples(rows, images, split = false)
        if (prefix == null) {
            throw BundleError("this bundle trains only the top ${split.trainLayers} of ${split.numHiddenLayers} decoder layers: " +
                "open its frozen layers (${split.file}) as the decoder prefix")
        }
        val per = batches.seqLen * split.hiddenSize
        val hidden = rows.mapIndexed { i, row ->
            val h = prefix.hiddenStates(batches.build(listOf(row), listOf(images[i])))
            if (h.size != per) throw BundleError("${split.file} gave ${h.size} values for ${samples[i].label}, expected " +
                "${batches.seqLen} x ${split.hiddenSize}")
            h
        }
        return PreparedSamples(rows, hidden, split = true)
    }

    /**
     * Train [session] on [prepared] samples. [workDir] receives periodic known-good checkpoints; [startCheckpoint]
     * is the checkpoint the session was opened from (the fallback if the very first step diverges).
     */
    fun train(
        session: TrainingSession,
        prepared: PreparedSamples,
        config: PersonalizeConfig,
        startCheckpoint: String,
        workDir: File,
        progress: (Int, Int, Float) -> Unit = { _, _, _ -> }
    ): PersonalizeResult {
        val rows = prepared.rows
        val lr = config.learningRate ?: section.defaultLearningRate
        session.setLearningRate(lr.toFloat())
        val order = personalizeBatches(rows.size, config.batchSize, config.steps, config.seed)
        val losses = ArrayList<Float>()
        val times = ArrayList<Double>()
        var lastGood = startCheckpoint
        var stopReason: String? = null
        workDir.mkdirs()
        for ((step, indices) in order.withIndex()) {
            val batchRows = indices.map { rows[it] }
            val inputs = if (prepared.split) batches.buildSplit(batchRows, indices.map { prepared.features[it]!! })
                else batches.build(batchRows, indices.map { prepared.features[it] })
            val t0 = clock.nanos()
            val loss = session.trainStep(inputs)
            val t1 = clock.nanos()
            if (loss.isNaN() || loss.isInfinite()) {
                session.lazyResetGrad() // the diverged gradients are dropped, never applied
                stopReason = "loss became $loss at step ${step + 1}; kept the last good checkpoint (lower the learning rate)"
                break
            }
            // These parameters just gave a finite loss: a good moment to keep them.
            if (config.checkpointEvery > 0 && step > 0 && step % config.checkpointEvery == 0) {
                val path = File(workDir, "last_good_checkpoint").path
                session.saveCheckpoint(path)
                lastGood = path
            }
            val t2 = clock.nanos()
            session.optimizerStep()
            session.lazyResetGrad()
            times.add(((t1 - t0) + (clock.nanos() - t2)) / 1e6) // the save above is not part of a step
            losses.add(loss)
            progress(step + 1, order.size, loss)
        }
        return PersonalizeResult(losses, times, losses.size, stopReason != null, stopReason, lastGood, lr, config.batchSize)
    }

    /**
     * Write the trained state to [outDir]: `checkpoint`, `inference_model.onnx` (exportModelForInference)
     * and the PEFT adapter directory `adapter/` with the trained tensors. After an early stop the
     * session is reopened from the last good checkpoint first.
     */
    fun export(
        session: TrainingSession,
        result: PersonalizeResult,
        backend: TrainingBackend,
        bundleDir: File,
        outDir: File
    ): File {
        outDir.mkdirs()
        var s = session
        var reopened = false
        if (result.stoppedEarly) {
            s = backend.open(result.lastGoodCheckpoint)
            reopened = true
        }
        try {
            val checkpoint = File(outDir, "checkpoint")
            s.saveCheckpoint(checkpoint.path)
            val inference = File(outDir, "inference_model.onnx")
            s.exportModelForInference(inference.path, section.inferenceOutputs)
            AdapterExport.write(section, File(bundleDir, section.adapterDir), inference, File(outDir, "adapter"))
            return inference
        } finally {
            if (reopened) s.close()
        }
    }
}
