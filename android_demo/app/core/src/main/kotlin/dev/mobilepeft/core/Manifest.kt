package dev.mobilepeft.core

import java.io.File
import java.io.FileInputStream
import java.security.MessageDigest

/** A bundle that cannot be used as it is; the message names the file (and the field) at fault. */
class BundleError(message: String) : RuntimeException(message)

/**
 * Typed access to a bundle's `manifest.json` (schema: export/bundle.schema.json).
 *
 * Every read is `manifest.<fn>("<path>", args...)` with a literal path from the manifest root:
 * segments joined by `.`; a segment ending in `[]` is an array (the next vararg, an Int, is the
 * index); one ending in `{}` is an object with arbitrary keys (the next vararg, a String, is the
 * key). For [count] and [keys] the last segment names the container itself and takes no argument.
 * A test (tests/test_android_core.py) parses these calls out of the sources and checks every path
 * against the schema, so nothing else reads the manifest by key.
 */
class Manifest private constructor(private val root: JsonObject, val source: String) {

    companion object {
        const val FILE = "manifest.json"

        fun parse(text: String, source: String = FILE): Manifest {
            val value = try {
                Json.parse(text)
            } catch (e: JsonError) {
                throw BundleError("$source: ${e.message}")
            }
            if (value !is JsonObject) throw BundleError("$source: the manifest must be a JSON object, found ${value.kind}")
            return Manifest(value, source)
        }

        fun read(file: File): Manifest {
            if (!file.isFile) throw BundleError("${file.path}: not found (a bundle directory holds a $FILE)")
            return parse(file.readText(Charsets.UTF_8), file.path)
        }
    }

    private class Found(val value: JsonValue?, val where: String)

    private fun resolve(path: String, args: Array<out Any>, lastIsContainer: Boolean, forHas: Boolean = false): Found {
        val segments = path.split('.')
        var cur: JsonValue? = root
        val where = StringBuilder()
        var argIndex = 0
        for ((i, segment) in segments.withIndex()) {
            val last = i == segments.size - 1
            val suffix = when {
                segment.endsWith("[]") -> "[]"
                segment.endsWith("{}") -> "{}"
                else -> ""
            }
            val name = segment.substring(0, segment.length - suffix.length)
            require(name.isNotEmpty()) { "bad manifest path '$path'" }
            if (where.isNotEmpty()) where.append('.')
            where.append(name)
            val obj = cur
            if (obj !is JsonObject) {
                throw BundleError("$source: ${where.toString().substringBeforeLast('.')}: expected an object, found ${obj!!.kind}")
            }
            cur = obj[name]
            if (cur == null) {
                if (forHas) return Found(null, where.toString())
                throw BundleError("$source: missing field ${where}")
            }
            if (suffix.length == 0 || (last && lastIsContainer)) continue
            require(argIndex < args.size) { "manifest path '$path' needs an argument for '$segment'" }
            val arg = args[argIndex++]
            if (suffix == "[]") {
                val array = cur
                if (array !is JsonArray) throw BundleError("$source: $where: expected an array, found ${array.kind}")
                require(arg is Int) { "manifest path '$path': index for '$segment' must be an Int" }
                where.append('[').append(arg).append(']')
                if (arg < 0 || arg >= array.items.size) {
                    if (forHas) return Found(null, where.toString())
                    throw BundleError("$source: missing field $where (the array has ${array.items.size} items)")
                }
                cur = array.items[arg]
            } else {
                val map = cur
                if (map !is JsonObject) throw BundleError("$source: $where: expected an object, found ${map.kind}")
                require(arg is String) { "manifest path '$path': key for '$segment' must be a String" }
                where.append('.').append(arg)
                cur = map[arg]
                if (cur == null) {
                    if (forHas) return Found(null, where.toString())
                    throw BundleError("$source: missing field $where")
                }
            }
        }
        require(argIndex == args.size) { "manifest path '$path' got ${args.size} arguments, used $argIndex" }
        return Found(cur, where.toString())
    }

    private fun wrongType(found: Found, expected: String, actual: JsonValue): Nothing =
        throw BundleError("$source: ${found.where}: expected $expected, found ${actual.kind}")

    private fun get(path: String, args: Array<out Any>): Found = resolve(path, args, lastIsContainer = false)

    fun string(path: String, vararg args: Any): String {
        val f = get(path, args)
        val v = f.value!!
        return if (v is JsonString) v.value else wrongType(f, "a string", v)
    }

    fun long(path: String, vararg args: Any): Long {
        val f = get(path, args)
        return asLong(f, f.value!!)
    }

    fun int(path: String, vararg args: Any): Int {
        val f = get(path, args)
        val v = asLong(f, f.value!!)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw BundleError("$source: ${f.where}: $v is out of range")
        return v.toInt()
    }

    fun double(path: String, vararg args: Any): Double {
        val f = get(path, args)
        val v = f.value!!
        return if (v is JsonNumber) v.toDouble() else wrongType(f, "a number", v)
    }

    fun bool(path: String, vararg args: Any): Boolean {
        val f = get(path, args)
        val v = f.value!!
        return if (v is JsonBool) v.value else wrongType(f, "a boolean", v)
    }

    /** An array of strings; integer items (fixed dims in a shape such as ["batch", 3, 64, 64]) come as their decimal text. */
    fun strings(path: String, vararg args: Any): List<String> {
        val f = get(path, args)
        return array(f).map { item ->
            when {
                item is JsonString -> item.value
                item is JsonNumber && item.toLongOrNull() != null -> item.text
                else -> wrongType(f, "an array of strings", item)
            }
        }
    }

    fun longs(path: String, vararg args: Any): List<Long> {
        val f = get(path, args)
        return array(f).map { asLong(f, it, "an array of integers") }
    }

    fun ints(path: String, vararg args: Any): List<Int> = longs(path, *args).map {
        if (it < Int.MIN_VALUE || it > Int.MAX_VALUE) throw BundleError("$source: $path: $it is out of range")
        it.toInt()
    }

    fun doubles(path: String, vararg args: Any): List<Double> {
        val f = get(path, args)
        return array(f).map { if (it is JsonNumber) it.toDouble() else wrongType(f, "an array of numbers", it) }
    }

    /** Number of items of the array the path ends at (its last `[]` takes no index). */
    fun count(path: String, vararg args: Any): Int {
        val f = resolve(path, args, lastIsContainer = true)
        return array(f).size
    }

    /** Keys, in file order, of the object the path ends at (its last `{}` takes no key). */
    fun keys(path: String, vararg args: Any): List<String> {
        val f = resolve(path, args, lastIsContainer = true)
        val v = f.value!!
        return if (v is JsonObject) ArrayList(v.fields.keys) else wrongType(f, "an object", v)
    }

    /** Whether the field exists and is not null. */
    fun has(path: String, vararg args: Any): Boolean {
        val f = resolve(path, args, lastIsContainer = false, forHas = true)
        return f.value != null && f.value !is JsonNull
    }

    private fun array(f: Found): List<JsonValue> {
        val v = f.value!!
        return if (v is JsonArray) v.items else wrongType(f, "an array", v)
    }

    private fun asLong(f: Found, v: JsonValue, expected: String = "an integer"): Long {
        if (v is JsonNumber) {
            val l = v.toLongOrNull()
            if (l != null) return l
        }
        wrongType(f, expected, v)
    }
}

/** One dimension of a tensor shape: a fixed size or a symbol ("batch", "T", "batch*128"). */
class Dim(val size: Long?, val symbol: String?) {
    companion object {
        fun parse(text: String): Dim {
            val n = text.toLongOrNull()
            return if (n != null) Dim(n, null) else Dim(null, text)
        }
    }

    /** The size for a batch of [batch] rows and the symbol values in [vars] ("batch*128" = batch x 128). */
    fun resolve(batch: Long, vars: Map<String, Long> = emptyMap()): Long {
        if (size != null) return size
        var product = 1L
        for (factor in symbol!!.split('*')) {
            val f = factor.trim()
            val n = f.toLongOrNull()
            product *= when {
                n != null -> n
                f == "batch" -> batch
                vars.containsKey(f) -> vars.getValue(f)
                else -> throw BundleError("${Manifest.FILE}: shape dimension '$symbol' has no value here")
            }
        }
        return product
    }

    override fun toString(): String = size?.toString() ?: symbol!!
}

class TensorSpec(val name: String, val dtype: String, val shape: List<Dim>) {
    fun resolve(batch: Long, vars: Map<String, Long> = emptyMap()): LongArray =
        LongArray(shape.size) { shape[it].resolve(batch, vars) }

    override fun toString(): String = "$name $dtype $shape"
}

class ModelDims(
    val family: String,
    val projectorType: String,
    val hiddenSize: Int,
    val numHiddenLayers: Int,
    val vocabSize: Int,
    val numImageTokens: Int,
    val mmHiddenSize: Int,
    val baseModel: String
)

class TokenizerInfo(val file: String, val bosId: Int, val eosId: Int, val padId: Int)

class PromptTemplate(
    val template: String,
    val system: String,
    val firstTurn: String,
    val nextTurn: String,
    val stop: String,
    val imagePlaceholder: String,
    val imageTokenId: Int
)

class ImagePreprocessingSpec(
    val size: Int,
    val aspect: String,
    val padColor: IntArray,
    val resize: String,
    val crop: String,
    val rescale: Double,
    val mean: DoubleArray,
    val std: DoubleArray,
    val layout: String
)

class MethodSpec(val name: String, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

class ExecuTorchSection(
    val file: String,
    val backend: String,
    val quantization: String,
    val dtype: String,
    val methods: Map<String, MethodSpec>
) {
    fun method(name: String): MethodSpec =
        methods[name] ?: throw BundleError("${Manifest.FILE}: executorch.methods has no '$name' (has ${methods.keys})")
}

class VisionEncoderSpec(val file: String, val input: TensorSpec, val output: TensorSpec)

class TrainableParam(val name: String, val shape: LongArray, val adapterKey: String)

class OnnxTrainingSection(
    val runtime: String,
    val trainingModel: String,
    val evalModel: String,
    val optimizerModel: String,
    val checkpoint: String,
    val nominalCheckpoint: String,
    val ortFormat: Map<String, String>,
    val visionEncoder: VisionEncoderSpec,
    val adapterDir: String,
    val inputs: List<TensorSpec>,
    val label: TensorSpec,
    val ignoreIndex: Int,
    val lossOutput: String,
    val inferenceOutputs: List<String>,
    val imageInput: String,
    val trainable: List<TrainableParam>,
    val optimizerType: String,
    val defaultLearningRate: Double,
    val maxGradNorm: Double,
    val trainProjector: Boolean
) {
    fun input(name: String): TensorSpec = inputs.firstOrNull { it.name == name }
        ?: throw BundleError("${Manifest.FILE}: onnx_training.inputs has no '$name' (has ${inputs.map { it.name }})")

    /** Sequence length of the training graph: `input_ids` shape[1]. */
    val seqLen: Int
        get() {
            val dims = input("input_ids").shape
            val n = if (dims.size == 2) dims[1].size else null
            return n?.toInt() ?: throw BundleError("${Manifest.FILE}: onnx_training.inputs input_ids must be [batch, seq_len], is $dims")
        }
}

class FileEntry(val path: String, val bytes: Long, val sha256: String)

/** Everything the apps need from a manifest, read only through [Manifest]'s path calls. */
class BundleSpec(val manifest: Manifest) {
    val format: String = manifest.string("format")
    val manifestVersion: Int = manifest.int("manifest_version")
    val createdBy: String = manifest.string("created_by")

    init {
        if (format != "mobilepeft-bundle") throw BundleError("${manifest.source}: format is '$format', expected 'mobilepeft-bundle'")
        if (manifestVersion != 1) {
            throw BundleError("${manifest.source}: manifest_version $manifestVersion is not supported by this app (it reads version 1); re-export the bundle or update the app")
        }
    }

    val model = ModelDims(
        manifest.string("model.family"),
        manifest.string("model.projector_type"),
        manifest.int("model.hidden_size"),
        manifest.int("model.num_hidden_layers"),
        manifest.int("model.vocab_size"),
        manifest.int("model.num_image_tokens"),
        manifest.int("model.mm_hidden_size"),
        manifest.string("model.base_model")
    )

    val tokenizer = TokenizerInfo(
        manifest.string("tokenizer.file"),
        manifest.int("tokenizer.bos_id"),
        manifest.int("tokenizer.eos_id"),
        manifest.int("tokenizer.pad_id")
    )

    val prompt = PromptTemplate(
        manifest.string("prompt.template"),
        manifest.string("prompt.system"),
        manifest.string("prompt.first_turn"),
        manifest.string("prompt.next_turn"),
        manifest.string("prompt.stop"),
        manifest.string("prompt.image_placeholder"),
        manifest.int("prompt.image_token_id")
    )

    val image = ImagePreprocessingSpec(
        manifest.int("image_preprocessing.size"),
        manifest.string("image_preprocessing.aspect"),
        manifest.ints("image_preprocessing.pad_color").toIntArray(),
        manifest.string("image_preprocessing.resize"),
        manifest.string("image_preprocessing.crop"),
        manifest.double("image_preprocessing.rescale"),
        manifest.doubles("image_preprocessing.mean").toDoubleArray(),
        manifest.doubles("image_preprocessing.std").toDoubleArray(),
        manifest.string("image_preprocessing.layout")
    )

    val maxSeqLen: Int = manifest.int("max_seq_len")

    val files: List<FileEntry> = manifest.keys("files{}").map { key ->
        FileEntry(key, manifest.long("files{}.bytes", key), manifest.string("files{}.sha256", key))
    }

    val executorch: ExecuTorchSection? = if (!manifest.has("executorch")) null else ExecuTorchSection(
        manifest.string("executorch.file"),
        manifest.string("executorch.backend"),
        manifest.string("executorch.quantization"),
        manifest.string("executorch.dtype"),
        readMethods()
    )

    val onnxTraining: OnnxTrainingSection? = if (!manifest.has("onnx_training")) null else readOnnxTraining()

    val hasCoreml: Boolean = manifest.has("coreml")

    init {
        expect("prompt.template", prompt.template, "v1")
        expect("image_preprocessing.aspect", image.aspect, "pad")
        expect("image_preprocessing.resize", image.resize, "shortest_side_bicubic")
        expect("image_preprocessing.crop", image.crop, "center")
        expect("image_preprocessing.layout", image.layout, "NCHW")
        if (image.padColor.size != 3 || image.mean.size != 3 || image.std.size != 3) {
            throw BundleError("${manifest.source}: image_preprocessing pad_color, mean and std need 3 values each")
        }
        if (prompt.firstTurn.indexOf("{question}") < 0) {
            throw BundleError("${manifest.source}: prompt.first_turn has no {question} placeholder")
        }
    }

    private fun expect(path: String, actual: String, wanted: String) {
        if (actual != wanted) throw BundleError("${manifest.source}: $path is '$actual'; this app supports '$wanted'")
    }

    /** A method's inputs or outputs, stated as flat (name, dtype, shape) triples. */
    private fun triples(method: String, side: String, n: Int, text: (Int) -> String,
                        shape: (Int) -> List<String>): List<TensorSpec> {
        if (n % 3 != 0) throw BundleError("${manifest.source}: executorch.methods.$method.$side must hold name, dtype, shape triples")
        return (0 until n / 3).map { k -> TensorSpec(text(3 * k), text(3 * k + 1), shape(3 * k + 2).map { Dim.parse(it) }) }
    }

    private fun readMethods(): Map<String, MethodSpec> {
        val methods = LinkedHashMap<String, MethodSpec>()
        for (name in manifest.keys("executorch.methods{}")) {
            val inputs = triples(name, "input", manifest.count("executorch.methods{}.input[]", name),
                { k -> manifest.string("executorch.methods{}.input[]", name, k) },
                { k -> manifest.strings("executorch.methods{}.input[]", name, k) })
            val outputs = triples(name, "output", manifest.count("executorch.methods{}.output[]", name),
                { k -> manifest.string("executorch.methods{}.output[]", name, k) },
                { k -> manifest.strings("executorch.methods{}.output[]", name, k) })
            methods[name] = MethodSpec(name, inputs, outputs)
        }
        for (required in listOf("vision_encoder", "token_embedding", "text_decoder")) {
            if (!methods.containsKey(required)) throw BundleError("${manifest.source}: executorch.methods lacks '$required'")
        }
        return methods
    }

    private fun readOnnxTraining(): OnnxTrainingSection {
        val inputs = (0 until manifest.count("onnx_training.inputs[]")).map { i ->
            TensorSpec(
                manifest.string("onnx_training.inputs[].name", i),
                manifest.string("onnx_training.inputs[].dtype", i),
                manifest.strings("onnx_training.inputs[].shape", i).map { Dim.parse(it) }
            )
        }
        val trainable = (0 until manifest.count("onnx_training.trainable[]")).map { i ->
            TrainableParam(
                manifest.string("onnx_training.trainable[].name", i),
                manifest.longs("onnx_training.trainable[].shape", i).toLongArray(),
                manifest.string("onnx_training.trainable[].adapter_key", i)
            )
        }
        val ortFormat = LinkedHashMap<String, String>()
        if (manifest.has("onnx_training.ort_format")) {
            for (key in manifest.keys("onnx_training.ort_format{}")) ortFormat[key] = manifest.string("onnx_training.ort_format{}", key)
        }
        return OnnxTrainingSection(
            manifest.string("onnx_training.runtime"),
            manifest.string("onnx_training.training_model"),
            manifest.string("onnx_training.eval_model"),
            manifest.string("onnx_training.optimizer_model"),
            manifest.string("onnx_training.checkpoint"),
            manifest.string("onnx_training.nominal_checkpoint"),
            ortFormat,
            VisionEncoderSpec(
                manifest.string("onnx_training.vision_encoder.file"),
                TensorSpec(
                    manifest.string("onnx_training.vision_encoder.input.name"),
                    manifest.string("onnx_training.vision_encoder.input.dtype"),
                    manifest.strings("onnx_training.vision_encoder.input.shape").map { Dim.parse(it) }
                ),
                TensorSpec(
                    manifest.string("onnx_training.vision_encoder.output.name"),
                    manifest.string("onnx_training.vision_encoder.output.dtype"),
                    manifest.strings("onnx_training.vision_encoder.output.shape").map { Dim.parse(it) }
                )
            ),
            manifest.string("onnx_training.adapter_dir"),
            inputs,
            TensorSpec(
                manifest.string("onnx_training.label.name"),
                manifest.string("onnx_training.label.dtype"),
                manifest.strings("onnx_training.label.shape").map { Dim.parse(it) }
            ),
            if (manifest.has("onnx_training.ignore_index")) manifest.int("onnx_training.ignore_index") else -100,
            manifest.string("onnx_training.loss_output"),
            manifest.strings("onnx_training.inference_outputs"),
            manifest.string("onnx_training.image_input"),
            trainable,
            manifest.string("onnx_training.optimizer.type"),
            manifest.double("onnx_training.optimizer.default_learning_rate"),
            manifest.double("onnx_training.optimizer.max_grad_norm"),
            manifest.bool("onnx_training.train_projector")
        )
    }

    fun requireExecutorch(): ExecuTorchSection = executorch
        ?: throw BundleError("${manifest.source}: this bundle has no executorch section (export it with `mobilepeft export executorch`)")

    fun requireOnnxTraining(): OnnxTrainingSection = onnxTraining
        ?: throw BundleError("${manifest.source}: this bundle has no onnx_training section (export it with `mobilepeft export onnx-training`)")

    /** Files the sections point at (each must also be listed in files{}). */
    fun referencedFiles(): List<String> {
        val out = ArrayList<String>()
        out.add(tokenizer.file)
        executorch?.let { out.add(it.file) }
        onnxTraining?.let {
            out.addAll(listOf(it.trainingModel, it.evalModel, it.optimizerModel, it.checkpoint, it.visionEncoder.file))
        }
        return out
    }
}

/** What a bundle directory holds: the size of a file by its path relative to the bundle, null if absent. */
interface FileLister {
    fun sizeOf(relativePath: String): Long?
}

class DirectoryFiles(val dir: File) : FileLister {
    override fun sizeOf(relativePath: String): Long? {
        val f = File(dir, relativePath)
        return if (f.isFile) f.length() else null
    }
}

object BundleFiles {
    /** Every file of files{} present with its byte size, and every file a section names listed there. */
    fun problems(spec: BundleSpec, files: FileLister): List<String> {
        val out = ArrayList<String>()
        val listed = HashSet<String>()
        for (entry in spec.files) {
            listed.add(entry.path)
            val size = files.sizeOf(entry.path)
            when {
                size == null -> out.add("${entry.path} is listed in ${Manifest.FILE} but missing from the bundle")
                size != entry.bytes -> out.add("${entry.path} has $size bytes, ${Manifest.FILE} says ${entry.bytes} (copied incompletely?)")
            }
        }
        for (path in spec.referencedFiles()) {
            if (!listed.contains(path)) out.add("$path is used by ${Manifest.FILE} but not listed in its files")
        }
        return out
    }

    fun check(spec: BundleSpec, files: FileLister) {
        val p = problems(spec, files)
        if (p.isNotEmpty()) throw BundleError("${spec.manifest.source}: " + p.joinToString("; "))
    }

    /** Lowercase hex SHA-256 of a file's content (as manifest.json records it), read in 1 MiB blocks. */
    fun sha256(file: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        FileInputStream(file).use { input ->
            val buf = ByteArray(1 shl 20)
            while (true) {
                val n = input.read(buf)
                if (n < 0) break
                digest.update(buf, 0, n)
            }
        }
        return hex(digest.digest())
    }

    fun sha256(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

    private fun hex(digest: ByteArray): String {
        val sb = StringBuilder()
        for (b in digest) {
            val v = b.toInt() and 0xFF
            sb.append(Character.forDigit(v shr 4, 16)).append(Character.forDigit(v and 15, 16))
        }
        return sb.toString()
    }
}

/**
 * A bundle directory: its manifest, read, and its files verified by [verifier] before anything is
 * loaded from them (size and SHA-256; the default keeps its stamps where the native runner does).
 */
class Bundle(val dir: File, verifier: BundleVerifier = BundleVerifier()) {
    val spec: BundleSpec = BundleSpec(Manifest.read(File(dir, Manifest.FILE)))

    /** What the verification hashed and what its stamp vouched for. */
    val verification: VerifyReport = verifier.verify(dir, spec)

    fun file(relativePath: String): File = File(dir, relativePath)
}
