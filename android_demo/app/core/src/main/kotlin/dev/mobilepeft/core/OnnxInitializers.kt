package dev.mobilepeft.core

import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Float32 initializers of an ONNX model by name (the trained adapter in an exported inference model), read
 * from the file field by field: the model is never loaded whole, so one over 2 GB (ORT then keeps its
 * weights in external data beside it) reads like a small one, holding only the tensors asked for.
 */
object OnnxInitializers {
    class Tensor(val shape: LongArray, val data: FloatArray)

    /**
     * The trained parameters of an ONNX Runtime bundle by adapter key (the manifest's order), read from the
     * inference model ORT exported after training; each must be there with the manifest's shape.
     */
    fun trained(section: OnnxTrainingSection, model: File): Map<String, Tensor> {
        val found = read(model, section.trainable.map { it.name }.toSet())
        val out = LinkedHashMap<String, Tensor>()
        for (p in section.trainable) {
            val t = found[p.name] ?: throw BundleError("${model.path}: the exported inference model has no parameter " +
                "'${p.name}'; it was not trained from this bundle")
            if (!t.shape.contentEquals(p.shape)) {
                throw BundleError("${model.path}: parameter '${p.name}' has shape ${t.shape.toList()}, ${Manifest.FILE} says ${p.shape.toList()}")
            }
            out[p.adapterKey] = t
        }
        return out
    }

    fun read(model: File, names: Set<String>): Map<String, Tensor> {
        if (!model.isFile) throw BundleError("${model.path}: not found")
        val out = HashMap<String, Tensor>()
        RandomAccessFile(model, "r").use { file ->
            try {
                val top = ProtoReader(FileBytes(file), 0, file.length())
                while (top.hasMore()) {
                    val (field, wire) = top.tag()
                    if (field == 7 && wire == 2) { // ModelProto.graph
                        val graph = top.message()
                        while (graph.hasMore()) {
                            val (gf, gw) = graph.tag()
                            if (gf == 5 && gw == 2) readTensor(graph.message(), model, names, out) else graph.skip(gw) // GraphProto.initializer
                        }
                    } else {
                        top.skip(wire)
                    }
                }
            } catch (e: ProtoError) {
                throw BundleError("${model.path}: not a valid ONNX file (${e.message})")
            }
        }
        return out
    }

    /** One TensorProto: its small fields are read, its data only located, and read only when [names] has it. */
    private fun readTensor(r: ProtoReader, model: File, names: Set<String>, out: MutableMap<String, Tensor>) {
        val dims = ArrayList<Long>()
        var dataType = 0
        var name = ""
        var raw: LongArray? = null // offset, length in the model file
        var packedFloats: LongArray? = null
        val floats = ArrayList<Float>()
        val external = HashMap<String, String>()
        var location = 0L
        while (r.hasMore()) {
            val (f, w) = r.tag()
            when {
                f == 1 && w == 0 -> dims.add(r.varint())
                f == 1 && w == 2 -> { val p = r.message(); while (p.hasMore()) dims.add(p.varint()) }
                f == 2 && w == 0 -> dataType = r.varint().toInt()
                f == 4 && w == 5 -> floats.add(java.lang.Float.intBitsToFloat(r.fixed32()))
                f == 4 && w == 2 -> packedFloats = r.span()
                f == 8 && w == 2 -> name = r.string()
                f == 9 && w == 2 -> raw = r.span()
                f == 13 && w == 2 -> { // external_data: StringStringEntryProto {key = 1, value = 2}
                    val e = r.message()
                    var key = ""
                    var value = ""
                    while (e.hasMore()) {
                        val (ef, ew) = e.tag()
                        when {
                            ef == 1 && ew == 2 -> key = e.string()
                            ef == 2 && ew == 2 -> value = e.string()
                            else -> e.skip(ew)
                        }
                    }
                    external[key] = value
                }
                f == 14 && w == 0 -> location = r.varint()
                else -> r.skip(w)
            }
        }
        if (!names.contains(name)) return
        if (dataType != 1) throw BundleError("${model.path}: initializer $name has ONNX data type $dataType, expected float32 (1)")
        val shape = dims.toLongArray()
        val count = shape.fold(1L) { a, b -> a * b }
        if (count > Int.MAX_VALUE / 4) throw BundleError("${model.path}: initializer $name has $count values, too many for one array")
        val n = count.toInt()
        val data = when {
            location == 1L -> readExternal(model, name, external, n)
            raw != null -> littleEndianFloats(r.source, raw, n, "${model.path}: initializer $name")
            packedFloats != null -> littleEndianFloats(r.source, packedFloats, n, "${model.path}: initializer $name")
            else -> {
                if (floats.size != n) throw BundleError("${model.path}: initializer $name has ${floats.size} floats for shape ${shape.toList()}")
                FloatArray(n) { floats[it] }
            }
        }
        out[name] = Tensor(shape, data)
    }

    /** A tensor kept in external data: `location` names a file beside the model, `offset` and `length` its bytes. */
    private fun readExternal(model: File, name: String, entries: Map<String, String>, n: Int): FloatArray {
        val location = entries["location"] ?: throw BundleError("${model.path}: initializer $name is external data without a location")
        val dir = model.absoluteFile.parentFile
        val file = File(dir, location)
        if (!file.canonicalPath.startsWith(dir.canonicalPath + File.separator)) {
            throw BundleError("${model.path}: initializer $name points outside the model's folder ($location)")
        }
        if (!file.isFile) throw BundleError("${file.path}: the external data of ${model.name} (initializer $name) is missing; copy it beside the model")
        val offset = entries["offset"]?.toLongOrNull() ?: 0L
        val length = entries["length"]?.toLongOrNull() ?: (4L * n)
        RandomAccessFile(file, "r").use { data ->
            if (offset < 0 || offset + length > data.length()) {
                throw BundleError("${file.path}: initializer $name needs bytes $offset..${offset + length}, the file has ${data.length()} (truncated?)")
            }
            return littleEndianFloats(FileBytes(data), longArrayOf(offset, length), n, "${file.path}: initializer $name")
        }
    }

    private fun littleEndianFloats(source: ProtoBytes, span: LongArray, n: Int, what: String): FloatArray {
        if (span[1] != 4L * n) throw BundleError("$what has ${span[1]} bytes for $n floats")
        val floats = FloatArray(n)
        ByteBuffer.wrap(source.copy(span[0], 4 * n)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(floats)
        return floats
    }
}
