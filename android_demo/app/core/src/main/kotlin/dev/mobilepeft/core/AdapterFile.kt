package dev.mobilepeft.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The phone's writer of the deployed model's adapter file (docs/on-device-loop.md): after ONNX Runtime
 * training, the trained tensors (keyed by PEFT name, A [r, in] and B [out, r]) go into a new `adapter.ptd`
 * for an ExecuTorch bundle exported with `--adapter-as-data`, which its runner swaps in without reloading the
 * model. Every adapter file of a bundle shares the bundle file's head (names, shapes, offsets), so the writer
 * copies that head and puts each tensor at the offset the manifest states: no flatbuffer library needed.
 */
object AdapterFile {
    /** Whether `section` holds the adapter an ORT bundle trains, so the phone can write its file: every tensor the ORT
     *  bundle trains has its place, and every other one lies in the layers a `--train-layers` bundle leaves frozen
     *  (they keep the bundle file's values). An ORT bundle that also trains the projector does not fit: the
     *  ExecuTorch bundle holds the projector merged. */
    fun fits(section: AdapterSection, ort: OnnxTrainingSection): Boolean {
        val trained = ort.trainable.map { it.adapterKey }.toSet()
        val keys = section.tensors.map { it.adapterKey }.toSet()
        return keys.containsAll(trained) && (keys - trained).all { decoderLayer(it) in 0 until (ort.split?.frozenLayers ?: 0) }
    }

    /** The decoder layer a PEFT tensor name belongs to (`...layers.7.self_attn...` -> 7), or -1. */
    fun decoderLayer(adapterKey: String): Int =
        Regex("""\.layers\.(\d+)\.""").find(adapterKey)?.groupValues?.get(1)?.toInt() ?: -1

    /** Refuse a file that does not fit the bundle, naming the first tensor that does not (missing, extra, shape, dtype). */
    fun check(section: AdapterSection, data: ByteArray, source: String) {
        val found = FlatTensorFile.read(data, source)
        for (t in section.tensors) {
            val f = found[t.key] ?: throw BundleError("$source: adapter tensor '${t.key}' (${t.adapterKey}) is missing")
            if (!f.shape.contentEquals(t.shape) || f.dtype != t.dtype) {
                throw BundleError("$source: adapter tensor '${t.key}' is ${f.dtype} ${f.shape.toList()}, the bundle expects " +
                    "${t.dtype} ${t.shape.toList()} (another rank or another model?)")
            }
        }
        val extra = (found.keys - section.tensors.map { it.key }.toSet()).sorted()
        if (extra.isNotEmpty()) throw BundleError("$source: adapter tensor '${extra[0]}' is not in the bundle's ${Manifest.FILE}")
    }

    /**
     * The bytes of a new adapter file: `template` (the bundle's own adapter file, checked here) with each tensor of
     * `trained` (by adapter key) in place, transposed where the bundle stores it so. Tensors of the decoder layers
     * below `frozenLayers` (a `--train-layers` ORT bundle's `split.frozen_layers`; 0 otherwise) that did not
     * train keep the template's values.
     */
    fun bytes(section: AdapterSection, template: ByteArray, templateSource: String,
              trained: Map<String, OnnxInitializers.Tensor>, frozenLayers: Int): ByteArray {
        if (template.size.toLong() != section.bytes) {
            throw BundleError("$templateSource: ${template.size} bytes, ${Manifest.FILE} says ${section.bytes} (copied incompletely?)")
        }
        check(section, template, templateSource)
        val head = template.copyOfRange(0, section.headBytes.toInt())
        if (BundleFiles.sha256(head) != section.headSha256) {
            throw BundleError("$templateSource: its head differs from the one ${Manifest.FILE} records; re-export the bundle")
        }
        val unknown = (trained.keys - section.tensors.map { it.adapterKey }.toSet()).sorted()
        if (unknown.isNotEmpty()) {
            throw BundleError("trained tensor '${unknown[0]}' has no place in the bundle's adapter file " +
                "(the ONNX Runtime bundle was exported from another adapter, or trains the projector)")
        }
        val out = ByteBuffer.wrap(template.copyOf()).order(ByteOrder.LITTLE_ENDIAN)
        for (t in section.tensors) {
            if (t.adapterKey !in trained && decoderLayer(t.adapterKey) in 0 until frozenLayers) continue
            val source = trained[t.adapterKey]
                ?: throw BundleError("no trained tensor '${t.adapterKey}' for adapter tensor '${t.key}'; train with the " +
                    "ONNX Runtime bundle exported from this bundle's adapter")
            val stored = if (t.transposed) longArrayOf(source.shape.last(), source.shape.first()) else source.shape
            if (source.shape.size != 2 || !stored.contentEquals(t.shape) || t.dtype != "float32") {
                throw BundleError("trained tensor '${t.adapterKey}' has shape ${source.shape.toList()}; the bundle stores " +
                    "'${t.key}' as ${t.dtype} ${t.shape.toList()}${if (t.transposed) " (transposed)" else ""}: another rank?")
            }
            val rows = source.shape[0].toInt()
            val cols = source.shape[1].toInt()
            out.position(t.offset.toInt())
            if (t.transposed) {
                for (c in 0 until cols) for (r in 0 until rows) out.putFloat(source.data[r * cols + c])
            } else {
                for (v in source.data) out.putFloat(v)
            }
        }
        return out.array()
    }

    /** Write the personalized adapter file atomically (the previous file stays until the new one is complete). */
    fun write(section: AdapterSection, template: File, trained: Map<String, OnnxInitializers.Tensor>, frozenLayers: Int, out: File) {
        AtomicFile.write(out, bytes(section, template.readBytes(), template.path, trained, frozenLayers))
    }
}
