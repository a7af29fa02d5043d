package dev.mobilepeft.core

import java.io.File

/** A clock the fakes move forward by hand. */
class ManualClock : Clock {
    var now = 0L
    fun advanceMs(ms: Double) {
        now += (ms * 1e6).toLong()
    }
    override fun nanos(): Long = now
}

/** A clock that moves 1 ms every time it is read. */
class TickClock : Clock {
    private var now = 0L
    override fun nanos(): Long {
        now += 1_000_000L
        return now
    }
}

/** ExecuTorch stand-in: each call costs known time on a [ManualClock]. */
class FakeEngine(private val clock: ManualClock, private val vocab: Int) : InferenceEngine {
    var run = 0
    val positions = ArrayList<Long>()
    var lastPromptSize = 0
    override val loadMs: Double get() = 123.5

    override fun encodeImage(pixels: FloatArray, shape: LongArray): ImageTokens {
        check(pixels.size.toLong() == shape.fold(1L) { a, b -> a * b }) { "pixels/shape" }
        clock.advanceMs(10.0 + run)
        return ImageTokens(FloatArray(16 * 128), 16, 128)
    }

    override fun prefill(image: ImageTokens, promptIds: LongArray): FloatArray {
        clock.advanceMs(20.0)
        lastPromptSize = promptIds.size
        positions.clear()
        return FloatArray(vocab).also { it[7] = 1f }
    }

    override fun step(token: Long, position: Long): FloatArray {
        clock.advanceMs(1.0)
        positions.add(position)
        if (positions.size == 8) run++
        return FloatArray(vocab).also { it[((token + 1) % vocab).toInt()] = 1f }
    }
}

fun benchTests(): List<TestCase> = listOf(
    TestCase("bench: medians, min, max and warm-up") { _ ->
        val s = Summary.of(listOf(3.0, 1.0, 2.0))
        assertEq(listOf(2.0, 1.0, 3.0), listOf(s.median, s.min, s.max), "odd")
        assertEq(2.5, Summary.of(listOf(4.0, 1.0, 3.0, 2.0)).median, "even")
        val stats = BenchStats(2)
        check(!stats.record(mapOf("x" to 100.0)) && !stats.record(mapOf("x" to 90.0))) { "warm-up runs not kept" }
        stats.record(mapOf("x" to 5.0))
        stats.record(mapOf("x" to 7.0))
        stats.record(mapOf("x" to 6.0))
        assertEq(3, stats.measuredRuns, "measured")
        assertEq(6.0, stats.summary("x").median, "median without warm-up")
        assertEq(5.0, stats.summary("x").min, "min")
    },
    TestCase("bench: chat-turn runner measures like bench.py and writes the schema's keys") { fx ->
        val spec = Bundle(fx.file("et_bundle")).spec
        val clock = ManualClock()
        val engine = FakeEngine(clock, spec.model.vocabSize)
        val runner = BenchmarkRunner(engine, clock)
        var calls = 0
        val result = runner.run(spec, BenchSettings(threads = 4, promptLen = 8, genLen = 8, runs = 5, warmup = 1),
            "Google Pixel 8 (Android 14)", { 321.0 }, { _, _, _ -> calls++ })
        assertEq(6, calls, "progress per run")
        assertEq(8, engine.lastPromptSize, "prompt length")
        assertEq((24L..31L).toList(), engine.positions.toList(), "decode positions after image + prompt")
        assertEq(13.0, result.visionEncodeMs!!.median, "vision median (runs 1..5: 11..15 ms)")
        assertEq(11.0, result.visionEncodeMs!!.min, "vision min")
        assertEq(15.0, result.visionEncodeMs!!.max, "vision max")
        assertClose(1200.0, result.prefillTokensPerS!!.median, 1e-6, "prefill tok/s = 24 / 20 ms")
        assertClose(1000.0, result.decodeTokensPerS!!.median, 1e-6, "decode tok/s = 8 / 8 ms")
        assertEq(33.0, result.timeToFirstTokenMs!!.median, "ttft")
        assertEq("portable", result.backend, "backend from the manifest")
        assertEq(24, result.promptTokens!!, "prompt tokens")
        val json = result.toJson()
        File(fx.out, "bench_inference.json").writeText(json)
        val parsed = Json.parse(json) as JsonObject
        assertEq(listOf("model_load_time_ms", "vision_encode_ms", "vision_encode_ms_min", "vision_encode_ms_max",
            "prefill_tokens_per_s", "prefill_tokens_per_s_min", "prefill_tokens_per_s_max", "decode_tokens_per_s",
            "decode_tokens_per_s_min", "decode_tokens_per_s_max", "time_to_first_token_ms", "time_to_first_token_ms_min",
            "time_to_first_token_ms_max", "peak_rss_mb", "threads", "backend", "quantization", "device", "runtime", "harness",
            "prompt_tokens", "generated_tokens", "runs"), parsed.fields.keys.toList(), "inference keys")
        assertEq("android-app", parsed.o("harness").str(), "harness")
        assertEq(123.5, parsed.o("model_load_time_ms").num(), "load ms")
        val e = assertThrows<BundleError>("too long") { runner.run(spec, BenchSettings(promptLen = 40, genLen = 8), "d", { 1.0 }) }
        check(e.message!!.contains("max_seq_len 64")) { "message: ${e.message}" }
    }
)

/** A real tiny model behind the TrainingSession interface: softmax regression of each label on its input token. */
open class SoftmaxSession(val vocab: Int, val features: Int, var w: FloatArray, private val inferenceModel: File) : TrainingSession {
    private val grad = FloatArray(vocab * features)
    var lr = 0f
    var optimizerSteps = 0
    var resets = 0
    var poisonAfter = -1
    var closed = false

    /** The feature position [t] of the batch is regressed on: here its input token. */
    protected open fun featureAt(inputs: Map<String, TensorData>, t: Int): Int {
        val id = inputs.getValue("input_ids").longs!![t]
        return if (id < 0) features - 1 else (id % (features - 1)).toInt()
    }

    override fun trainStep(inputs: Map<String, TensorData>): Float {
        val labels = inputs.getValue("labels").longs!!
        var loss = 0.0
        val count = labels.count { it != -100L }
        val probs = DoubleArray(vocab)
        for (t in labels.indices) {
            if (labels[t] == -100L) continue
            val h = featureAt(inputs, t)
            var max = Double.NEGATIVE_INFINITY
            for (v in 0 until vocab) max = Math.max(max, w[v * features + h].toDouble())
            var sum = 0.0
            for (v in 0 until vocab) { probs[v] = Math.exp(w[v * features + h] - max); sum += probs[v] }
            val y = labels[t].toInt()
            loss -= Math.log(probs[y] / sum)
            for (v in 0 until vocab) {
                val g = probs[v] / sum - (if (v == y) 1.0 else 0.0)
                grad[v * features + h] += (g / count).toFloat()
            }
        }
        return (loss / count).toFloat()
    }

    override fun optimizerStep() {
        for (i in w.indices) w[i] -= lr * grad[i]
        optimizerSteps++
        if (optimizerSteps == poisonAfter) java.util.Arrays.fill(w, Float.NaN)
    }

    override fun lazyResetGrad() {
        java.util.Arrays.fill(grad, 0f)
        resets++
    }

    override fun setLearningRate(lr: Float) {
        this.lr = lr
    }

    override fun saveCheckpoint(path: String) {
        val bb = java.nio.ByteBuffer.allocate(4 * w.size).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        for (v in w) bb.putFloat(v)
        File(path).writeBytes(bb.array())
    }

    override fun exportModelForInference(path: String, outputs: List<String>) {
        check(outputs == listOf("logits")) { "outputs from the manifest" }
        inferenceModel.copyTo(File(path), overwrite = true) // a real ORT export of the bundle
    }

    override fun close() {
        closed = true
    }
}

class SoftmaxBackend(val vocab: Int, val features: Int, val inferenceModel: File) : TrainingBackend {
    val opened = ArrayList<String>()
    override fun open(checkpointPath: String): TrainingSession {
        opened.add(checkpointPath)
        val w = readFloats(File(checkpointPath))
        return SoftmaxSession(vocab, features, w, inferenceModel)
    }
}

class FakeImageEncoder(private val elements: Int) : ImageEncoder {
    var calls = 0
    override fun encode(pixels: FloatArray, shape: LongArray): FloatArray {
        calls++
        val s = pixels.sum()
        return FloatArray(elements) { (s * 1e-3f) + it * 1e-4f }
    }
}

private fun samples(spec: BundleSpec): List<Sample> {
    val rng = java.util.Random(3)
    val n = 3 * spec.image.size * spec.image.size
    val qa = listOf("What colour is the shape?" to "red", "What shape is it?" to "a circle", "Which colour?" to "blue",
        "What is shown?" to "a green square", "Describe it." to "a small yellow triangle")
    return qa.mapIndexed { i, (q, a) -> Sample(FloatArray(n) { rng.nextFloat() }, q, a, "photo ${i + 1}") }
}

fun personalizerTests(): List<TestCase> = listOf(
    TestCase("personalize: batch order equals Python's _batches (MT19937 shuffle)") { fx ->
        for (c in fx.json("batches.json").arr()) {
            val got = personalizeBatches(c.o("n").lng().toInt(), c.o("batch_size").lng().toInt(), c.o("steps").lng().toInt(), c.o("seed").lng())
            assertEq(c.o("batches").arr().map { it.ints() }, got, "batches for ${Json.write(c.o("seed"))}")
        }
    },
    TestCase("personalize: batches carry the manifest's names, dtypes and shapes") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val tok = SentencePieceTokenizer.load(fx.file("ort_bundle/tokenizer.model"))
        val p = Personalizer(spec, tok, FakeImageEncoder(16 * 128))
        val s = samples(spec).subList(0, 2)
        val rows = p.encodeRows(s)
        val inputs = p.batches.build(rows, listOf(FloatArray(16 * spec.model.hiddenSize) { 1f }, null))
        val seq = spec.requireOnnxTraining().seqLen.toLong()
        assertEq(listOf("input_ids", "attention_mask", "image_embeds", "labels"), inputs.keys.toList(), "names")
        assertEq(listOf(2L, seq), inputs.getValue("input_ids").shape.toList(), "input_ids shape")
        assertEq("int64", inputs.getValue("attention_mask").dtype, "mask dtype")
        assertEq(listOf(2L, 16L, spec.model.hiddenSize.toLong()), inputs.getValue("image_embeds").shape.toList(), "image shape")
        assertEq(listOf(2L * seq), inputs.getValue("labels").shape.toList(), "labels flattened")
        val img = inputs.getValue("image_embeds").floats!!
        check(img[0] == 1f && img[img.size - 1] == 0f) { "second row without an image is zeros" }
        assertEq(-200L, inputs.getValue("input_ids").longs!![rows[0].inputIds.indexOf(-200L)], "image slot")
        assertEq(16, rows[0].inputIds.count { it == -200L }, "image span widened to num_image_tokens")
    },
    TestCase("personalize: a real tiny model's loss goes down, progress and timing counted") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val tok = SentencePieceTokenizer.load(fx.file("ort_bundle/tokenizer.model"))
        val encoder = FakeImageEncoder(16 * spec.model.hiddenSize)
        val p = Personalizer(spec, tok, encoder, TickClock())
        val session = SoftmaxSession(spec.model.vocabSize, 32, FloatArray(spec.model.vocabSize * 32), fx.file("inference_model.onnx"))
        val progress = ArrayList<Int>()
        val all = samples(spec)
        val result = p.train(session, p.prepare(all, p.encodeImages(all), null), PersonalizeConfig(steps = 40, batchSize = 2, learningRate = 2.0, checkpointEvery = 0),
            "start_checkpoint", File(fx.out, "work1")) { step, total, _ ->
            check(total == 40) { "total" }
            progress.add(step)
        }
        assertEq((1..40).toList(), progress, "progress callbacks")
        assertEq(40, result.losses.size, "losses")
        assertEq(5, encoder.calls, "each photo encoded once")
        assertEq(40, session.optimizerSteps, "optimizer steps")
        assertEq(2.0f, session.lr, "learning rate set")
        val first = result.losses.subList(0, 5).average()
        val last = result.losses.subList(35, 40).average()
        check(last < 0.5 * first) { "loss should fall: first ${result.losses.subList(0, 5)}, last ${result.losses.subList(35, 40)}" }
        check(result.stepMs.all { it == 2.0 }) { "step times (trainStep + optimizer, not the save): ${result.stepMs.distinct()}" }
        check(!result.stoppedEarly && result.lastGoodCheckpoint == "start_checkpoint") { "no early stop" }
        val bench = result.benchResult("Google Pixel 8 (Android 14)", 2, 250.0)
        File(fx.out, "bench_training.json").writeText(bench.toJson())
        val keys = (bench.toJsonObject()).fields.keys.toList()
        assertEq(listOf("train_step_ms", "train_step_ms_min", "train_step_ms_max", "train_peak_rss_mb", "threads", "backend",
            "quantization", "device", "runtime", "harness", "train_steps", "batch_size"), keys, "training keys")
        // Default learning rate comes from the manifest.
        val s2 = SoftmaxSession(spec.model.vocabSize, 32, FloatArray(spec.model.vocabSize * 32), fx.file("inference_model.onnx"))
        p.train(s2, p.prepare(all, p.encodeImages(all), null), PersonalizeConfig(steps = 1, batchSize = 1), "c", File(fx.out, "work0"))
        assertEq(spec.requireOnnxTraining().defaultLearningRate.toFloat(), s2.lr, "default lr")
    },
    TestCase("personalize: NaN loss stops, keeps the last good checkpoint, export reopens it") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val tok = SentencePieceTokenizer.load(fx.file("ort_bundle/tokenizer.model"))
        val p = Personalizer(spec, tok, FakeImageEncoder(16 * spec.model.hiddenSize), TickClock())
        val work = File(fx.out, "work2")
        work.deleteRecursively()
        val v = spec.model.vocabSize
        val backend = SoftmaxBackend(v, 32, fx.file("inference_model.onnx"))
        val start = File(work.also { it.mkdirs() }, "start").path
        SoftmaxSession(v, 32, FloatArray(v * 32), fx.file("inference_model.onnx")).saveCheckpoint(start)
        val session = backend.open(start) as SoftmaxSession
        session.poisonAfter = 3
        val all = samples(spec)
        val result = p.train(session, p.prepare(all, p.encodeImages(all), null), PersonalizeConfig(steps = 10, batchSize = 2, learningRate = 1.0, checkpointEvery = 2),
            start, work)
        check(result.stoppedEarly && result.stopReason!!.contains("step 4")) { "stop: ${result.stopReason}" }
        assertEq(3, result.losses.size, "three good steps")
        check(result.losses.all { !it.isNaN() }) { "no NaN in the loss history" }
        assertEq(3, session.optimizerSteps, "the diverged step is never applied")
        assertEq(4, session.resets, "gradients reset after the NaN step too")
        assertEq(File(work, "last_good_checkpoint").path, result.lastGoodCheckpoint, "checkpoint saved at step 3 (params of step 2)")
        val out = File(fx.out, "personal")
        out.deleteRecursively()
        p.export(session, result, backend, fx.file("ort_bundle"), out)
        assertEq(listOf(start, result.lastGoodCheckpoint), backend.opened, "export reopened the good checkpoint")
        val saved = readFloats(File(out, "checkpoint"))
        check(saved.all { !it.isNaN() }) { "exported checkpoint is finite" }
        check(saved.contentEquals(readFloats(File(result.lastGoodCheckpoint)))) { "exported = last good" }
        check(File(out, "inference_model.onnx").isFile) { "inference model" }
        check(File(out, "adapter/adapter_model.safetensors").isFile && File(out, "adapter/adapter_config.json").isFile) { "adapter dir" }
    },
    TestCase("personalize: adapter tensors from the exported ORT inference model") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val section = spec.requireOnnxTraining()
        val out = File(fx.out, "adapter_from_onnx")
        out.deleteRecursively()
        AdapterExport.write(section, fx.file("ort_bundle/adapter"), fx.file("inference_model.onnx"), out)
        val tensors = OnnxInitializers.read(fx.file("inference_model.onnx"), section.trainable.map { it.name }.toSet())
        assertEq(section.trainable.size, tensors.size, "every trainable tensor found")
        check(File(out, AdapterExport.ADAPTER_FILE).length() > 8) { "safetensors written" }
    },
    TestCase("personalize: greedy answers stop at EOS") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val tok = SentencePieceTokenizer.load(fx.file("ort_bundle/tokenizer.model"))
        val enc = ConversationEncoder.forBundle(spec, tok)
        val question = "What shape is it?"
        val promptLen = enc.widen(enc.promptIds(enc.questionWithImage(question))).size
        val target = tok.encode("a red circle").toList() + spec.tokenizer.eosId
        val v = spec.model.vocabSize
        val model = object : LogitsModel {
            var calls = 0
            override fun logits(inputs: Map<String, TensorData>): FloatArray {
                calls++
                val mask = inputs.getValue("attention_mask").longs!!
                val n = mask.count { it == 1L }
                val seq = mask.size
                val out = FloatArray(seq * v)
                out[(n - 1) * v + target[n - promptLen]] = 5f
                return out
            }
            override fun close() {}
        }
        val answer = GreedyAnswerer(spec, model, tok).answer(FloatArray(16 * spec.model.hiddenSize), question)
        assertEq("a red circle", answer, "answer")
        assertEq(target.size, model.calls, "one call per token, EOS ends it")
    }
)
