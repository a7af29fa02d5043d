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
    /** Whether `section` holds exactly the adapter an ORT bundle trains, so the phone can write its file (an ORT
     *  bundle that also trains the projector does not fit: the ExecuTorch bundle holds the projector merged). */
    fun fits(section: AdapterSection, ort: OnnxTrainingSection): Boolean =
        section.tensors.map { it.adapterKey }.toSet() == ort.trainable.map { it.adapterKey }.toSet()

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
     * `trained` (by adapter key) in place, transposed where the bundle stores it so.
     */
    fun bytes(section: AdapterSection, template: ByteArray, templateSource: String,
              trained: Map<String, OnnxInitializers.Tensor>): ByteArray {
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
        val out = ByteBuffer.allocate(section.bytes.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        out.put(head)
        for (t in section.tensors) {
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
    fun write(section: AdapterSection, template: File, trained: Map<String, OnnxInitializers.Tensor>, out: File) {
        AtomicFile.write(out, bytes(section, template.readBytes(), template.path, trained))
    }
}
