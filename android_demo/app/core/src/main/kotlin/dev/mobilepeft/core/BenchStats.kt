package dev.mobilepeft.core

/** Median, min and max of the measured (post-warm-up) runs of one metric. */
/** `key` (the median), `key_min` and `key_max`: how every harness reports a measured series. */
fun JsonObjectBuilder.putStats(key: String, summary: Summary): JsonObjectBuilder =
    put(key, summary.median).put(key + "_min", summary.min).put(key + "_max", summary.max)

class Summary(val median: Double, val min: Double, val max: Double) {
    companion object {
        /** Python's statistics.median: the middle value, or the mean of the two middle ones. */
        fun of(values: List<Double>): Summary {
            require(values.isNotEmpty()) { "no measured runs" }
            val sorted = values.sorted()
            val n = sorted.size
            val median = if (n % 2 == 1) sorted[n / 2] else (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            return Summary(median, sorted[0], sorted[n - 1])
        }
    }
}

/** Collects per-run samples of named metrics, skipping the first [warmup] runs. */
class BenchStats(val warmup: Int) {
    private val samples = LinkedHashMap<String, ArrayList<Double>>()
    var runsSeen: Int = 0
        private set

    /** Record one run's figures; returns false for a warm-up run (not kept). */
    fun record(run: Map<String, Double>): Boolean {
        val keep = runsSeen >= warmup
        runsSeen++
        if (!keep) return false
        for ((k, v) in run) samples.getOrPut(k) { ArrayList() }.add(v)
        return true
    }

    val measuredRuns: Int get() = Math.max(0, runsSeen - warmup)

    fun summary(key: String): Summary = Summary.of(samples[key] ?: throw IllegalStateException("no samples of $key"))

    fun has(key: String): Boolean = samples[key]?.isNotEmpty() == true
}

/**
 * One benchmark's figures (docs/mobile.md, mobilepeft/export/bench.schema.json): the same keys whoever
 * measured them. Null fields are left out of the JSON.
 */
class BenchResult(
    val threads: Int,
    val backend: String,
    val quantization: String,
    val device: String,
    val runtime: String,
    val harness: String = "android-app",
    val modelLoadTimeMs: Double? = null,
    val visionEncodeMs: Summary? = null,
    val prefillTokensPerS: Summary? = null,
    val decodeTokensPerS: Summary? = null,
    val timeToFirstTokenMs: Summary? = null,
    val peakRssMb: Double? = null,
    val promptTokens: Int? = null,
    val generatedTokens: Int? = null,
    val runs: Int? = null,
    val trainStepMs: Summary? = null,
    val trainPeakRssMb: Double? = null,
    val trainSteps: Int? = null,
    val batchSize: Int? = null
) {
    fun toJsonObject(): JsonObject {
        val o = JsonObjectBuilder()
        modelLoadTimeMs?.let { o.put("model_load_time_ms", it) }
        visionEncodeMs?.let { o.putStats("vision_encode_ms", it) }
        prefillTokensPerS?.let { o.putStats("prefill_tokens_per_s", it) }
        decodeTokensPerS?.let { o.putStats("decode_tokens_per_s", it) }
        timeToFirstTokenMs?.let { o.putStats("time_to_first_token_ms", it) }
        peakRssMb?.let { o.put("peak_rss_mb", it) }
        trainStepMs?.let { o.putStats("train_step_ms", it) }
        trainPeakRssMb?.let { o.put("train_peak_rss_mb", it) }
        o.put("threads", threads)
        o.put("backend", backend)
        o.put("quantization", quantization)
        o.put("device", device)
        o.put("runtime", runtime)
        o.put("harness", harness)
        promptTokens?.let { o.put("prompt_tokens", it) }
        generatedTokens?.let { o.put("generated_tokens", it) }
        runs?.let { o.put("runs", it) }
        trainSteps?.let { o.put("train_steps", it) }
        batchSize?.let { o.put("batch_size", it) }
        return o.build()
    }

    fun toJson(): String = Json.write(toJsonObject(), 2) + "\n"
}

/** Image tokens from the vision encoder: [1, count, hidden] floats. */
class ImageTokens(val data: FloatArray, val count: Int, val hidden: Int)

/** A runtime's calls for one chat turn (ExecuTorch's three methods on the phone). */
interface InferenceEngine {
    /** Milliseconds the program took to load (measured by the engine when it was created). */
    val loadMs: Double

    fun encodeImage(pixels: FloatArray, shape: LongArray): ImageTokens

    /** A new conversation: image tokens then [promptIds]; returns the logits of the last position. */
    fun prefill(image: ImageTokens, promptIds: LongArray): FloatArray

    /** One decode step of [token] at [position]; returns its logits. */
    fun step(token: Long, position: Long): FloatArray
}

class BenchSettings(val threads: Int = 2, val promptLen: Int = 32, val genLen: Int = 32, val runs: Int = 5, val warmup: Int = 1) {
    init {
        require(threads >= 1 && promptLen >= 1 && genLen >= 1 && runs >= 1 && warmup >= 0) { "bench settings must be positive" }
    }
}

/** A clock in nanoseconds (System.nanoTime on the phone; a fake one in tests). */
interface Clock {
    fun nanos(): Long
}

object SystemClock : Clock {
    override fun nanos(): Long = System.nanoTime()
}

fun argmax(v: FloatArray): Int {
    var best = 0
    for (i in 1 until v.size) if (v[i] > v[best]) best = i
    return best
}

/** Fixed benchmark inputs that fit the bundle, the same ranges as `mobilepeft bench` uses. */
object BenchInputs {
    fun check(spec: BundleSpec, settings: BenchSettings) {
        val nImage = spec.model.numImageTokens
        if (nImage + settings.promptLen + settings.genLen + 1 > spec.maxSeqLen) {
            throw BundleError("${Manifest.FILE}: image tokens ($nImage) + prompt length ${settings.promptLen} + generated " +
                "${settings.genLen} exceed the bundle's max_seq_len ${spec.maxSeqLen}; shorten them or re-export with a larger --max-seq-len")
        }
    }

    /** Uniform(-1.5, 1.5) pixels, NCHW [1, 3, size, size], from a fixed seed. */
    fun pixels(spec: BundleSpec, seed: Long = 0): FloatArray {
        val rng = java.util.Random(seed)
        val s = spec.image.size
        return FloatArray(3 * s * s) { (rng.nextDouble() * 3.0 - 1.5).toFloat() }
    }

    /** [promptLen] token ids in [3, min(vocab, 500)), from a fixed seed. */
    fun promptIds(spec: BundleSpec, promptLen: Int, seed: Long = 0): LongArray {
        val rng = java.util.Random(seed + 1)
        val hi = Math.min(spec.model.vocabSize, 500)
        return LongArray(promptLen) { 3L + rng.nextInt(hi - 3) }
    }
}

/** The chat-turn benchmark of mobilepeft/export/bench.py `_one_run`: vision encode, prefill, gen_len greedy steps. */
class BenchmarkRunner(private val engine: InferenceEngine, private val clock: Clock = SystemClock) {

    fun oneRun(pixels: FloatArray, shape: LongArray, prompt: LongArray, genLen: Int): Map<String, Double> {
        val t0 = clock.nanos()
        val image = engine.encodeImage(pixels, shape)
        val t1 = clock.nanos()
        var token = argmax(engine.prefill(image, prompt)).toLong()
        val t2 = clock.nanos()
        var position = (image.count + prompt.size).toLong()
        for (i in 0 until genLen) {
            token = argmax(engine.step(token, position)).toLong()
            position++
        }
        val t3 = clock.nanos()
        val out = LinkedHashMap<String, Double>()
        out["vision_encode_ms"] = (t1 - t0) / 1e6
        out["prefill_tokens_per_s"] = (image.count + prompt.size) / seconds(t2 - t1)
        out["decode_tokens_per_s"] = genLen / seconds(t3 - t2)
        out["time_to_first_token_ms"] = (t2 - t0) / 1e6
        return out
    }

    private fun seconds(ns: Long): Double = Math.max(ns, 1L) / 1e9

    /**
     * warm-up + measured runs over the bundle's fixed inputs; [peakRssMb] is read after the runs,
     * [onRun] hears (run index, total, was warm-up) after each run.
     */
    fun run(
        spec: BundleSpec,
        settings: BenchSettings,
        device: String,
        peakRssMb: () -> Double,
        onRun: (Int, Int, Boolean) -> Unit = { _, _, _ -> }
    ): BenchResult {
        val et = spec.requireExecutorch()
        BenchInputs.check(spec, settings)
        val pixels = BenchInputs.pixels(spec)
        val s = spec.image.size.toLong()
        val shape = longArrayOf(1, 3, s, s)
        val prompt = BenchInputs.promptIds(spec, settings.promptLen)
        val stats = BenchStats(settings.warmup)
        val imageCount = spec.model.numImageTokens
        val total = settings.warmup + settings.runs
        for (i in 0 until total) {
            val r = oneRun(pixels, shape, prompt, settings.genLen)
            stats.record(r)
            onRun(i + 1, total, i < settings.warmup)
        }
        return BenchResult(
            threads = settings.threads,
            backend = et.backend,
            quantization = et.quantization,
            device = device,
            runtime = "executorch",
            modelLoadTimeMs = engine.loadMs,
            visionEncodeMs = stats.summary("vision_encode_ms"),
            prefillTokensPerS = stats.summary("prefill_tokens_per_s"),
            decodeTokensPerS = stats.summary("decode_tokens_per_s"),
            timeToFirstTokenMs = stats.summary("time_to_first_token_ms"),
            peakRssMb = peakRssMb(),
            promptTokens = imageCount + settings.promptLen,
            generatedTokens = settings.genLen,
            runs = settings.runs
        )
    }
}
