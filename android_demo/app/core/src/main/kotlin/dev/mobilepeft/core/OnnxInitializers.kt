package dev.mobilepeft.core

/** Float32 initializers of an ONNX model by name (the trained adapter in an exported inference model). */
object OnnxInitializers {
    class Tensor(val shape: LongArray, val data: FloatArray)

    /**
     * The trained parameters of an ONNX Runtime bundle by adapter key (the manifest's order), read from the
     * inference model ORT exported after training; each must be there with the manifest's shape.
     */
    fun trained(section: OnnxTrainingSection, model: ByteArray): Map<String, Tensor> {
        val found = read(model, section.trainable.map { it.name }.toSet())
        val out = LinkedHashMap<String, Tensor>()
        for (p in section.trainable) {
            val t = found[p.name] ?: throw BundleError("the exported inference model has no parameter '${p.name}'; " +
                "it was not trained from this bundle")
            if (!t.shape.contentEquals(p.shape)) {
                throw BundleError("parameter '${p.name}' has shape ${t.shape.toList()}, ${Manifest.FILE} says ${p.shape.toList()}")
            }
            out[p.adapterKey] = t
        }
        return out
    }

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
