package dev.mobilepeft.demo

import dev.mobilepeft.core.BundleError
import dev.mobilepeft.core.ExecuTorchSection
import dev.mobilepeft.core.ImageTokens
import dev.mobilepeft.core.InferenceEngine
import dev.mobilepeft.core.Manifest
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/**
 * The bundle's .pte through ExecuTorch's Module API, in ExecuTorch's multimodal convention
 * (manifest executorch.methods): vision_encoder (pixels -> image tokens), token_embedding
 * (ids -> embeddings), text_decoder (embeddings + cache_position -> logits, static KV cache).
 */
class ExecuTorchEngine(pte: File, private val section: ExecuTorchSection, threads: Int) : InferenceEngine {
    private val module: Module
    override val loadMs: Double

    init {
        if (!pte.isFile) throw BundleError("${pte.path}: the program named by ${Manifest.FILE} executorch.file is missing")
        for ((method, kind) in listOf("token_embedding" to "int64", "text_decoder" to "int64")) {
            val spec = section.method(method)
            val dtype = if (method == "token_embedding") spec.inputs[0].dtype else spec.inputs[1].dtype
            if (dtype != kind) throw BundleError("${Manifest.FILE}: executorch.methods.$method takes $dtype ids; this app feeds $kind")
        }
        val t0 = System.nanoTime()
        module = Module.load(pte.path, Module.LOAD_MODE_MMAP, threads)
        for (method in listOf("vision_encoder", "token_embedding", "text_decoder")) {
            val status = module.loadMethod(method)
            if (status != 0) throw BundleError("${pte.path}: ExecuTorch cannot load method $method (error $status)")
        }
        loadMs = (System.nanoTime() - t0) / 1e6
    }

    private val hidden: Int = section.method("vision_encoder").outputs[0].shape.last().size?.toInt()
        ?: throw BundleError("${Manifest.FILE}: executorch.methods.vision_encoder output needs a fixed hidden size")

    override fun encodeImage(pixels: FloatArray, shape: LongArray): ImageTokens {
        val out = module.execute("vision_encoder", EValue.from(Tensor.fromBlob(pixels, shape)))[0].toTensor()
        val dims = out.shape()
        return ImageTokens(out.dataAsFloatArray, dims[1].toInt(), dims[2].toInt())
    }

    private fun embed(ids: LongArray): FloatArray {
        val out = module.execute("token_embedding", EValue.from(Tensor.fromBlob(ids, longArrayOf(1, ids.size.toLong()))))[0]
        return out.toTensor().dataAsFloatArray
    }

    private fun decode(embeddings: FloatArray, positions: LongArray): FloatArray {
        val t = positions.size.toLong()
        val logits = module.execute(
            "text_decoder",
            EValue.from(Tensor.fromBlob(embeddings, longArrayOf(1, t, hidden.toLong()))),
            EValue.from(Tensor.fromBlob(positions, longArrayOf(t)))
        )[0].toTensor()
        val all = logits.dataAsFloatArray
        val vocab = (all.size / t).toInt()
        return all.copyOfRange(all.size - vocab, all.size) // the last position
    }

    override fun prefill(image: ImageTokens, promptIds: LongArray): FloatArray {
        val text = embed(promptIds)
        val embeddings = FloatArray(image.data.size + text.size)
        System.arraycopy(image.data, 0, embeddings, 0, image.data.size)
        System.arraycopy(text, 0, embeddings, image.data.size, text.size)
        val n = image.count + promptIds.size
        return decode(embeddings, LongArray(n) { it.toLong() })
    }

    override fun step(token: Long, position: Long): FloatArray = decode(embed(longArrayOf(token)), longArrayOf(position))

    fun close() {
        module.destroy()
    }
}
