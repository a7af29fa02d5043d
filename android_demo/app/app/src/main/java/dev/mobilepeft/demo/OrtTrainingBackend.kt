package dev.mobilepeft.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import ai.onnxruntime.OrtTrainingSession
import dev.mobilepeft.core.Bundle
import dev.mobilepeft.core.BundleError
import dev.mobilepeft.core.DecoderPrefix
import dev.mobilepeft.core.ImageEncoder
import dev.mobilepeft.core.LogitsModel
import dev.mobilepeft.core.TensorData
import dev.mobilepeft.core.TrainingBackend
import dev.mobilepeft.core.TrainingSession
import java.io.File
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.LongBuffer
import java.nio.file.Paths

/** TensorData -> OnnxTensor (callers close them). */
internal fun toOnnx(env: OrtEnvironment, t: TensorData): OnnxTensor = when (t.dtype) {
    "float32" -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.floats!!), t.shape)
    "int64" -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.longs!!), t.shape)
    "int32" -> OnnxTensor.createTensor(env, IntBuffer.wrap(t.ints!!), t.shape)
    else -> throw IllegalArgumentException("unsupported dtype ${t.dtype}")
}

/** An ORT inference session over one of the bundle's frozen or exported graphs, on [threads] threads. */
internal fun inferenceSession(env: OrtEnvironment, path: String, threads: Int): OrtSession {
    val options = OrtSession.SessionOptions()
    options.setIntraOpNumThreads(threads)
    return env.createSession(path, options)
}

/**
 * One run of an ORT inference [session]: its inputs taken by name from [inputs], the float32 [output]
 * (or its first one) copied out. A missing input is refused naming [what] and the input.
 */
internal fun runForFloats(env: OrtEnvironment, session: OrtSession, inputs: Map<String, TensorData>, output: String,
                          what: String): FloatArray {
    val feeds = LinkedHashMap<String, OnnxTensor>()
    try {
        for (name in session.inputNames) {
            val t = inputs[name] ?: throw BundleError("$what needs input '$name', which the batch lacks")
            feeds[name] = toOnnx(env, t)
        }
        session.run(feeds).use { result ->
            val out = result.get(output)
            val buf = ((if (out.isPresent) out.get() else result.get(0)) as OnnxTensor).floatBuffer
            val data = FloatArray(buf.remaining())
            buf.get(data)
            return data
        }
    } finally {
        for (t in feeds.values) t.close()
    }
}

/** The bundle's ORT training artifacts (manifest onnx_training), opened from a checkpoint file. */
class OrtTrainingBackend(private val env: OrtEnvironment, private val bundle: Bundle) : TrainingBackend {
    private val section = bundle.spec.requireOnnxTraining()

    val bundleCheckpoint: String get() = bundle.file(section.checkpoint).path

    override fun open(checkpointPath: String): TrainingSession {
        if (!File(checkpointPath).isFile) throw BundleError("$checkpointPath: ORT checkpoint not found")
        // exportModelForInference re-reads the eval model from this path later: it stays on disk (filesDir).
        val session = env.createTrainingSession(
            checkpointPath,
            bundle.file(section.trainingModel).path,
            bundle.file(section.evalModel).path,
            bundle.file(section.optimizerModel).path
        )
        return OrtTrainingSessionAdapter(env, session, section.lossOutput)
    }
}

class OrtTrainingSessionAdapter(
    private val env: OrtEnvironment,
    private val session: OrtTrainingSession,
    private val lossOutput: String
) : TrainingSession {

    override fun trainStep(inputs: Map<String, TensorData>): Float {
        val tensors = LinkedHashMap<String, OnnxTensor>()
        try {
            for ((name, t) in inputs) tensors[name] = toOnnx(env, t)
            session.trainStep(tensors).use { result ->
                val named = result.get(lossOutput)
                val value = if (named.isPresent) named.get() else result.get(0)
                return (value as OnnxTensor).floatBuffer.get(0)
            }
        } finally {
            for (t in tensors.values) t.close()
        }
    }

    override fun optimizerStep() {
        session.optimizerStep()
    }

    override fun lazyResetGrad() {
        session.lazyResetGrad()
    }

    override fun setLearningRate(lr: Float) {
        session.setLearningRate(lr)
    }

    override fun saveCheckpoint(path: String) {
        // Write beside the target, then rename: a crash mid-write never leaves half a checkpoint.
        val target = File(path)
        val tmp = File(target.parentFile, ".${target.name}.tmp")
        session.saveCheckpoint(Paths.get(tmp.path), false)
        if (target.exists()) target.delete()
        if (!tmp.renameTo(target)) throw java.io.IOException("cannot move the checkpoint to $path")
    }

    override fun exportModelForInference(path: String, outputs: List<String>) {
        session.exportModelForInference(Paths.get(path), outputs.toTypedArray())
    }

    override fun close() {
        session.close()
    }
}

/** The bundle's vision encoder (onnx_training.vision_encoder) as an ORT inference session. */
class OrtImageEncoder(private val env: OrtEnvironment, bundle: Bundle, threads: Int) : ImageEncoder {
    private val spec = bundle.spec.requireOnnxTraining().visionEncoder
    private val session: OrtSession = inferenceSession(env, bundle.file(spec.file).path, threads)

    override fun encode(pixels: FloatArray, shape: LongArray): FloatArray {
        OnnxTensor.createTensor(env, FloatBuffer.wrap(pixels), shape).use { input ->
            session.run(mapOf(spec.input.name to input)).use { result ->
                val out = result.get(spec.output.name)
                val value = if (out.isPresent) out.get() else result.get(0)
                val buf = (value as OnnxTensor).floatBuffer
                val data = FloatArray(buf.remaining())
                buf.get(data)
                return data
            }
        }
    }

    fun close() {
        session.close()
    }
}

/**
 * A `--train-layers` bundle's frozen decoder layers (onnx_training.split.file) as an ORT inference session. Over
 * 2 GB its weights are external data (split.data_file) beside it: ORT reads them from the file's folder, so the
 * app passes a path, never the bytes.
 */
class OrtDecoderPrefix(private val env: OrtEnvironment, bundle: Bundle, threads: Int) : DecoderPrefix {
    private val split = bundle.spec.requireOnnxTraining().split
        ?: throw BundleError("${bundle.dir.path}: this bundle trains the whole decoder; it has no frozen layers to open")
    private val session: OrtSession = inferenceSession(env, bundle.file(split.file).path, threads)

    override fun hiddenStates(inputs: Map<String, TensorData>): FloatArray =
        runForFloats(env, session, inputs, split.output.name, split.file)

    fun close() {
        session.close()
    }
}

/** An exported inference model (exportModelForInference): graph inputs in, full-sequence logits out. */
class OrtLogitsModel(private val env: OrtEnvironment, file: File, threads: Int, private val output: String) : LogitsModel {
    private val session: OrtSession = inferenceSession(env, file.path, threads)

    override fun logits(inputs: Map<String, TensorData>): FloatArray =
        runForFloats(env, session, inputs, output, "the inference model")

    override fun close() {
        session.close()
    }
}
