package dev.mobilepeft.core

import java.io.File

/** Reads and writes safetensors files of F32 tensors (little-endian, JSON header padded to 8 bytes). */
object Safetensors {
    /** Every tensor of [file] by name; a tensor of another dtype, or bytes that do not fit its shape, is refused by name. */
    fun read(file: File): Map<String, OnnxInitializers.Tensor> {
        if (!file.isFile) throw BundleError("${file.path}: not found")
        val bytes = file.readBytes()
        val buf = java.nio.ByteBuffer.wrap(bytes).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        if (bytes.size < 8) throw BundleError("${file.path}: ${bytes.size} bytes, not a safetensors file")
        val headerLen = buf.getLong(0)
        if (headerLen < 2 || headerLen > bytes.size - 8) throw BundleError("${file.path}: header of $headerLen bytes does not fit the file")
        val header = try {
            Json.parse(String(bytes, 8, headerLen.toInt(), Charsets.UTF_8))
        } catch (e: JsonError) {
            throw BundleError("${file.path}: header is not JSON (${e.message})")
        }
        if (header !is JsonObject) throw BundleError("${file.path}: header is not a JSON object")
        val base = 8 + headerLen.toInt()
        val out = LinkedHashMap<String, OnnxInitializers.Tensor>()
        for ((name, entry) in header.fields) {
            if (name == "__metadata__") continue
            val e = (entry as? JsonObject)?.fields ?: throw BundleError("${file.path}: tensor '$name' has no header object")
            val dtype = (e["dtype"] as? JsonString)?.value
            if (dtype != "F32") throw BundleError("${file.path}: tensor '$name' is $dtype; the app reads F32 adapters")
            val shape = ((e["shape"] as? JsonArray)?.items ?: emptyList()).map { (it as JsonNumber).toLongOrNull() ?: -1L }.toLongArray()
            val offsets = ((e["data_offsets"] as? JsonArray)?.items ?: emptyList()).map { (it as JsonNumber).toLongOrNull() ?: -1L }
            val n = shape.fold(1L) { a, b -> a * b }
            if (offsets.size != 2 || offsets[0] < 0 || offsets[1] - offsets[0] != 4 * n || base + offsets[1] > bytes.size) {
                throw BundleError("${file.path}: tensor '$name' ${shape.toList()} has data offsets $offsets that do not fit it or the file")
            }
            val data = FloatArray(n.toInt())
            java.nio.ByteBuffer.wrap(bytes, base + offsets[0].toInt(), 4 * n.toInt()).order(java.nio.ByteOrder.LITTLE_ENDIAN)
                .asFloatBuffer().get(data)
            out[name] = OnnxInitializers.Tensor(shape, data)
        }
        return out
    }

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
        AtomicFile.write(file, buf.array())
    }
}
