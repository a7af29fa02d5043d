package dev.mobilepeft.core

import java.io.File

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
        AtomicFile.write(file, buf.array())
    }
}
