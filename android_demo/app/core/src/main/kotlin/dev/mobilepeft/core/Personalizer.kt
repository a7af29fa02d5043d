package dev.mobilepeft.core

import java.io.File

/** A named graph input: dtype (float32, int64, int32), shape and the data of that dtype. */
class TensorData private constructor(
    val dtype: String,
    val shape: LongArray,
    val floats: FloatArray?,
    val longs: LongArray?,
    val ints: IntArray?
) {
    val elementCount: Long get() = shape.fold(1L) { a, b -> a * b }

    companion object {
        fun ofFloats(shape: LongArray, data: FloatArray): TensorData = checked(TensorData("float32", shape, data, null, null), data.size)
        fun ofLongs(shape: LongArray, data: LongArray): TensorData = checked(TensorData("int64", shape, null, data, null), data.size)
        fun ofInts(shape: LongArray, data: IntArray): TensorData = checked(TensorData("int32", shape, null, null, data), data.size)

        /** Integer data in the manifest's integer dtype. */
        fun ofIntegers(dtype: String, shape: LongArray, data: LongArray): TensorData = when (dtype) {
            "int64" -> ofLongs(shape, data)
            "int32" -> ofInts(shape, IntArray(data.size) { data[it].toInt() })
            else -> throw BundleError("${Manifest.FILE}: integer input has dtype $dtype; this app feeds int64 or int32")
        }

        private fun checked(t: TensorData, n: Int): TensorData {
            if (t.elementCount != n.toLong()) throw IllegalArgumentException("shape ${t.shape.toList()} needs ${t.elementCount} values, got $n")
            return t
        }
    }
}

/** The ONNX Runtime training session over the bundle's artifacts (OrtTrainingSession on the phone). */
interface TrainingSession {
    /** Forward + backward on [inputs]; returns the loss. */
    fun trainStep(inputs: Map<String, TensorData>): Float
    fun optimizerStep()
    fun lazyResetGrad()
    fun setLearningRate(lr: Float)
    fun saveCheckpoint(path: String)
    fun exportModelForInference(path: String, outputs: List<String>)
    fun close()
}

/** Opens a training session from a checkpoint file (the bundle's, or one saved by an earlier session). */
interface TrainingBackend {
    fun open(checkpointPath: String): TrainingSession
}

/** The bundle's vision encoder (onnx_training.vision_encoder): pixels [1,3,S,S] -> image tokens [1,N,H]. */
interface ImageEncoder {
    fun encode(pixels: FloatArray, shape: LongArray): FloatArray
}

/** A model with full-sequence logits ([1, seq_len, vocab]) for the graph inputs: the exported inference model. */
interface LogitsModel {
    fun logits(inputs: Map<String, TensorData>): FloatArray
    fun close()
}

/** Answers a question about a photo (before/after comparison). */
interface Answerer {
    fun answer(imageTokens: FloatArray?, question: String): String
}

class Sample(val pixels: FloatArray, val question: String, val answer: String, val label: String)

/** Builds the named training inputs from rows and encoded images, from the manifest's names, dtypes and shapes. */
class BatchBuilder(private val section: OnnxTrainingSection) {
    val seqLen: Int = section.seqLen
    private val imageShape: LongArray = section.visionEncoder.output.resolve(1)

    fun imageElements(): Int = (imageShape.fold(1L) { a, b -> a * b }).toInt()

    fun build(rows: List<EncodedRow>, images: List<FloatArray?>): Map<String, TensorData> {
        require(rows.size == images.size) { "${rows.size} rows but ${images.size} images" }
        val b = rows.size.toLong()
        val out = LinkedHashMap<String, TensorData>()
        for (spec in section.inputs) {
            val shape = spec.resolve(b)
            when (spec.name) {
                section.imageInput -> {
                    if (spec.dtype != "float32") throw BundleError("${Manifest.FILE}: ${spec.name} must be float32, is ${spec.dtype}")
                    val per = imageElements()
                    val data = FloatArray(rows.size * per)
                    for ((i, img) in images.withIndex()) {
                        if (img == null) continue // zeros for a row without an image
                        if (img.size != per) throw IllegalArgumentException("image tokens have ${img.size} values, the graph takes $per")
                        System.arraycopy(img, 0, data, i * per, per)
                    }
                    out[spec.name] = TensorData.ofFloats(shape, data)
                }
                "input_ids" -> out[spec.name] = TensorData.ofIntegers(spec.dtype, checkRow(shape, spec), concat(rows) { it.inputIds })
                "attention_mask" -> out[spec.name] = TensorData.ofIntegers(spec.dtype, checkRow(shape, spec), concat(rows) { it.attentionMask })
                else -> throw BundleError("${Manifest.FILE}: onnx_training.inputs has '${spec.name}', which this app cannot fill " +
                    "(it feeds input_ids, attention_mask and ${section.imageInput})")
            }
        }
        val label = section.label
        val labelShape = label.resolve(b)
        if (labelShape.size != 1 || labelShape[0] != b * seqLen) {
            throw BundleError("${Manifest.FILE}: onnx_training.label shape ${label.shape} is not [batch*$seqLen]")
        }
        out[label.name] = TensorData.ofIntegers(label.dtype, labelShape, concat(rows) { it.labels })
        return out
    }

    private fun checkRow(shape: LongArray, spec: TensorSpec): LongArray {
        if (shape.size != 2 || shape[1] != seqLen.toLong()) throw BundleError("${Manifest.FILE}: ${spec.name} shape ${spec.shape} is not [batch, $seqLen]")
        return shape
    }

    private fun concat(rows: List<EncodedRow>, f: (EncodedRow) -> LongArray): LongArray {
        val out = LongArray(rows.size * seqLen)
        for ((i, r) in rows.withIndex()) System.arraycopy(f(r), 0, out, i * seqLen, seqLen)
        return out
    }
}

/** Python's random.Random (MT19937, seeded from an int) — enough of it for `shuffle`, so batches equal the desktop's. */
class PyRandom(seed: Long) {
    private val mt = LongArray(624)
    private var index = 624

    init {
        var n = Math.abs(seed)
        val key = ArrayList<Long>()
        if (n == 0L) key.add(0L)
        while (n > 0) {
            key.add(n and 0xFFFFFFFFL)
            n = n ushr 32
        }
        initGenrand(19650218L)
        var i = 1
        var j = 0
        var k = Math.max(624, key.size)
        while (k > 0) {
            mt[i] = ((mt[i] xor ((mt[i - 1] xor (mt[i - 1] ushr 30)) * 1664525L)) + key[j] + j) and 0xFFFFFFFFL
            i++
            j++
            if (i >= 624) { mt[0] = mt[623]; i = 1 }
            if (j >= key.size) j = 0
            k--
        }
        k = 623
        while (k > 0) {
            mt[i] = ((mt[i] xor ((mt[i - 1] xor (mt[i - 1] ushr 30)) * 1566083941L)) - i) and 0xFFFFFFFFL
            i++
            if (i >= 624) { mt[0] = mt[623]; i = 1 }
            k--
        }
        mt[0] = 0x80000000L
    }

    private fun initGenrand(s: Long) {
        mt[0] = s and 0xFFFFFFFFL
        for (i in 1 until 624) mt[i] = (1812433253L * (mt[i - 1] xor (mt[i - 1] ushr 30)) + i) and 0xFFFFFFFFL
        index = 624
    }

    fun nextUInt32(): Long {
        if (index >= 624) {
            for (kk in 0 until 624) {
                val y = (mt[kk] and 0x80000000L) or (mt[(kk + 1) % 624] and 0x7FFFFFFFL)
                mt[kk] = mt[(kk + 397) % 624] xor (y ushr 1) xor (if (y and 1L != 0L) 0x9908B0DFL else 0L)
            }
            index = 0
        }
        var y = mt[index++]
        y = y xor (y ushr 11)
        y = y xor ((y shl 7) and 0x9D2C5680L)
        y = y xor ((y shl 15) and 0xEFC60000L)
        y = y xor (y ushr 18)
        return y and 0xFFFFFFFFL
    }

    fun getrandbits(k: Int): Long {
        require(k in 1..32)
        return nextUInt32() ushr (32 - k)
    }

    fun randbelow(n: Int): Int {
        val k = 32 - Integer.numberOfLeadingZeros(n)
        var r = getrandbits(k)
        while (r >= n) r = getrandbits(k)
        return r.toInt()
    }

    fun <T> shuffle(x: MutableList<T>) {
        for (i in x.size - 1 downTo 1) {
            val j = randbelow(i + 1)
            val t = x[i]
            x[i] = x[j]
            x[j] = t
        }
    }
}

/** Epoch-wise shuffled index batches, [steps] of them (export/personalize.py `_batches`). */
fun personalizeBatches(n: Int, batchSize: Int, steps: Int, seed: Long): List<List<Int>> {
    require(n >= 1 && batchSize >= 1 && steps >= 1) { "need samples, a batch size and steps" }
    val rng = PyRandom(seed)
    val order = ArrayList<Int>()
    while (order.size < steps * batchSize) {
        val epoch = (0 until n).toMutableList()
        rng.shuffle(epoch)
        order.addAll(epoch)
    }
    return (0 until steps).map { order.subList(it * batchSize, (it + 1) * batchSize).toList() }
}

class PersonalizeConfig(
    val steps: Int = 20,
    val batchSize: Int = 4,
    val learningRate: Double? = null,
    val seed: Long = 0,
    /** Save a known-good checkpoint every this many steps (0: only the start one is kept as fallback). */
    val checkpointEvery: Int = 10
) {
    init {
        require(steps >= 1 && batchSize >= 1) { "steps and batch size must be at least 1" }
        require(learningRate == null || learningRate > 0) { "learning rate must be positive" }
        require(checkpointEvery >= 0) { "checkpointEvery must be >= 0" }
    }

    /** Steps for [epochs] passes over [samples] samples. */
    companion object {
        fun stepsForEpochs(epochs: Int, samples: Int, batchSize: Int): Int = Math.max(1, (epochs * samples + batchSize - 1) / batchSize)
    }
}

class PersonalizeResult(
    val losses: List<Float>,
    val stepMs: List<Double>,
    val stepsDone: Int,
    val stoppedEarly: Boolean,
    val stopReason: String?,
    /** A checkpoint whose parameters gave a finite loss (the bundle's, a periodic save, or the final one). */
    val lastGoodCheckpoint: String,
    val learningRate: Double,
    val batchSize: Int
) {
    fun benchResult(device: String, threads: Int, peakRssMb: Double): BenchResult = BenchResult(
        threads = threads, backend = "cpu", quantization = "none", device = device, runtime = "onnxruntime-training",
        trainStepMs = Summary.of(stepMs), trainPeakRssMb = peakRssMb, trainSteps = stepsDone, batchSize = batchSize
    )
}

/**
 * The on-device training loop of export/personalize.py: samples -> rows (v1 template) + image tokens
 * (vision encoder, each photo once) -> named inputs -> trainStep / optimizerStep / lazyResetGrad,
 * with epoch-wise seeded shuffling, per-step timing and progress. A NaN/inf loss stops training
 * before its optimizer step and keeps the last checkpoint whose parameters gave a finite loss.
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
     * Train [session] on [samples]. [workDir] receives periodic known-good checkpoints; [startCheckpoint]
     * is the checkpoint the session was opened from (the fallback if the very first step diverges).
     */
    fun train(
        session: TrainingSession,
        samples: List<Sample>,
        config: PersonalizeConfig,
        startCheckpoint: String,
        workDir: File,
        progress: (Int, Int, Float) -> Unit = { _, _, _ -> }
    ): PersonalizeResult {
        if (samples.isEmpty()) throw ConversationError("add at least one photo with a question and an answer")
        val rows = encodeRows(samples)
        val images = encodeImages(samples)
        val lr = config.learningRate ?: section.defaultLearningRate
        session.setLearningRate(lr.toFloat())
        val order = personalizeBatches(rows.size, config.batchSize, config.steps, config.seed)
        val losses = ArrayList<Float>()
        val times = ArrayList<Double>()
        var lastGood = startCheckpoint
        var stopReason: String? = null
        workDir.mkdirs()
        for ((step, indices) in order.withIndex()) {
            val inputs = batches.build(indices.map { rows[it] }, indices.map { images[it] })
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
            AdapterExport.write(section, File(bundleDir, section.adapterDir), inference.readBytes(), File(outDir, "adapter"))
            return inference
        } finally {
            if (reopened) s.close()
        }
    }
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

/** Float32 initializers of an ONNX model by name (the trained adapter in an exported inference model). */
object OnnxInitializers {
    class Tensor(val shape: LongArray, val data: FloatArray)

    fun read(model: ByteArray, names: Set<String>): Map<String, Tensor> {
        val out = HashMap<String, Tensor>()
        try {
            val top = ProtoReader(model, 0, model.size)
            while (top.hasMore()) {
                val (field, wire) = top.tag()
                if (field == 7 && wire == 2) { // ModelProto.graph
                    val graph = top.message()
                    while (graph.hasMore()) {
                        val (gf, gw) = graph.tag()
                        if (gf == 5 && gw == 2) readTensor(graph.message(), names, out) else graph.skip(gw) // GraphProto.initializer
                    }
                } else {
                    top.skip(wire)
                }
            }
        } catch (e: ProtoError) {
            throw BundleError("the exported inference model is not a valid ONNX file (${e.message})")
        }
        return out
    }

    private fun readTensor(r: ProtoReader, names: Set<String>, out: MutableMap<String, Tensor>) {
        val dims = ArrayList<Long>()
        var dataType = 0
        var name = ""
        var raw: ByteArray? = null
        val floats = ArrayList<Float>()
        var external = false
        while (r.hasMore()) {
            val (f, w) = r.tag()
            when {
                f == 1 && w == 0 -> dims.add(r.varint())
                f == 1 && w == 2 -> { val p = r.message(); while (p.hasMore()) dims.add(p.varint()) }
                f == 2 && w == 0 -> dataType = r.varint().toInt()
                f == 4 && w == 5 -> floats.add(java.lang.Float.intBitsToFloat(r.fixed32()))
                f == 4 && w == 2 -> { val p = r.message(); while (p.hasMore()) floats.add(java.lang.Float.intBitsToFloat(p.fixed32())) }
                f == 8 && w == 2 -> name = r.string()
                f == 9 && w == 2 -> raw = r.bytes()
                f == 14 && w == 0 -> external = r.varint() == 1L
                else -> r.skip(w)
            }
        }
        if (!names.contains(name)) return
        if (dataType != 1) throw BundleError("initializer $name has ONNX data type $dataType, expected float32 (1)")
        if (external) throw BundleError("initializer $name is stored as external data; the app reads adapters from a single-file model")
        val shape = dims.toLongArray()
        val n = shape.fold(1L) { a, b -> a * b }.toInt()
        val data = FloatArray(n)
        val rawBytes = raw
        if (rawBytes != null) {
            if (rawBytes.size != 4 * n) throw BundleError("initializer $name has ${rawBytes.size} bytes for $n floats")
            val bb = java.nio.ByteBuffer.wrap(rawBytes).order(java.nio.ByteOrder.LITTLE_ENDIAN)
            for (i in 0 until n) data[i] = bb.getFloat(i * 4)
        } else {
            if (floats.size != n) throw BundleError("initializer $name has ${floats.size} floats for shape ${shape.toList()}")
            for (i in 0 until n) data[i] = floats[i]
        }
        out[name] = Tensor(shape, data)
    }
}

/** Writes safetensors files (little-endian F32, JSON header padded to 8 bytes). */
object Safetensors {
    fun write(file: File, tensors: Map<String, OnnxInitializers.Tensor>, metadata: Map<String, String>) {
        val keys = tensors.keys.sorted()
        val header = JsonObjectBuilder()
        val meta = JsonObjectBuilder()
        for ((k, v) in metadata) meta.put(k, v)
        header.put("__metadata__", meta.build())
        var offset = 0L
        for (k in keys) {
            val t = tensors.getValue(k)
            val bytes = 4L * t.data.size
            header.put(k, JsonObjectBuilder()
                .put("dtype", "F32")
                .put("shape", JsonArray(t.shape.map { Json.number(it) }))
                .put("data_offsets", JsonArray(listOf(Json.number(offset), Json.number(offset + bytes))))
                .build())
            offset += bytes
        }
        val headerText = StringBuilder(Json.write(header.build()))
        while ((headerText.toString().toByteArray(Charsets.UTF_8).size) % 8 != 0) headerText.append(' ')
        val headerBytes = headerText.toString().toByteArray(Charsets.UTF_8)
        val buf = java.nio.ByteBuffer.allocate(8 + headerBytes.size + offset.toInt()).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        buf.putLong(headerBytes.size.toLong())
        buf.put(headerBytes)
        for (k in keys) for (v in tensors.getValue(k).data) buf.putFloat(v)
        val tmp = File(file.parentFile, "." + file.name + ".tmp")
        tmp.writeBytes(buf.array())
        if (!tmp.renameTo(file)) {
            file.delete()
            if (!tmp.renameTo(file)) throw java.io.IOException("cannot write ${file.path}")
        }
    }
}

/**
 * The trained adapter as a PEFT directory, like `mobilepeft adapter from-ort`: the bundle's adapter
 * files, with `adapter_model.safetensors` (LoRA tensors under their PEFT keys) and, when the projector
 * trained, `mm_projector.safetensors`, both read from the exported inference model's initializers.
 */
object AdapterExport {
    const val ADAPTER_FILE = "adapter_model.safetensors"
    const val PROJECTOR_FILE = "mm_projector.safetensors"
    const val META_FILE = "mobilepeft_adapter.json"

    fun write(section: OnnxTrainingSection, bundleAdapterDir: File, inferenceModel: ByteArray, outDir: File) {
        val names = section.trainable.map { it.name }.toSet()
        val found = OnnxInitializers.read(inferenceModel, names)
        val lora = LinkedHashMap<String, OnnxInitializers.Tensor>()
        val projector = LinkedHashMap<String, OnnxInitializers.Tensor>()
        for (p in section.trainable) {
            val t = found[p.name] ?: throw BundleError("the exported inference model has no parameter '${p.name}'; " +
                "it was not trained from this bundle")
            if (!t.shape.contentEquals(p.shape)) {
                throw BundleError("parameter '${p.name}' has shape ${t.shape.toList()}, ${Manifest.FILE} says ${p.shape.toList()}")
            }
            if (p.adapterKey.startsWith("model.mm_projector.")) projector[p.adapterKey] = t else lora[p.adapterKey] = t
        }
        outDir.mkdirs()
        val files = bundleAdapterDir.listFiles() ?: throw BundleError("${bundleAdapterDir.path}: the bundle's adapter directory is missing")
        for (f in files) if (f.isFile) f.copyTo(File(outDir, f.name), overwrite = true)
        Safetensors.write(File(outDir, ADAPTER_FILE), lora, mapOf("format" to "pt"))
        if (projector.isNotEmpty()) {
            Safetensors.write(File(outDir, PROJECTOR_FILE), projector, mapOf("format" to "pt"))
            val meta = File(outDir, META_FILE)
            if (meta.isFile) {
                val parsed = Json.parse(meta.readText(Charsets.UTF_8))
                if (parsed !is JsonObject) throw BundleError("${meta.path}: expected a JSON object")
                val fields = LinkedHashMap(parsed.fields)
                fields["projector_trained"] = JsonBool(true)
                meta.writeText(Json.write(JsonObject(fields), 2) + "\n", Charsets.UTF_8)
            }
        }
    }
}
