package dev.mobilepeft.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The named tensors of an ExecuTorch FlatTensor data file (`.ptd`): name, dtype, shape and byte range.
 *
 * Layout: `[u32 root offset]["FT01"]["FH01" header: flatbuffer offset/size, segment base offset/size]`
 * `[flatbuffer FlatTensor{version, segments[{offset, size}], named_data[{key, segment_index,`
 * `tensor_layout{scalar_type, sizes, dim_order}}]}][data segments]`. Read with bounds checks, so a foreign or
 * damaged file is refused naming what does not fit instead of crashing (docs/on-device-loop.md).
 */
object FlatTensorFile {
    class Entry(val key: String, val dtype: String, val shape: LongArray, val offset: Long, val bytes: Long)

    private const val HEADER_OFFSET = 8
    private const val HEADER_LENGTH = 40
    private val SCALAR_TYPES = mapOf(6 to ("float32" to 4), 5 to ("float16" to 2), 7 to ("float64" to 8))

    /** Every tensor by name; throws [BundleError] naming `source` (and the tensor) when the file is damaged. */
    fun read(data: ByteArray, source: String): Map<String, Entry> {
        fun refuse(why: String): Nothing = throw BundleError("$source: $why; write it again from the bundle's adapter file")
        if (data.size < HEADER_OFFSET + HEADER_LENGTH || String(data, 4, 4, Charsets.US_ASCII) != "FT01" ||
            String(data, 8, 4, Charsets.US_ASCII) != "FH01") {
            refuse("not an ExecuTorch FlatTensor data file (.ptd): bad magic or too short")
        }
        val buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN)
        val segmentBase = buf.getLong(HEADER_OFFSET + 24)
        val segmentSize = buf.getLong(HEADER_OFFSET + 32)
        if (segmentBase < 0 || segmentSize < 0 || segmentBase + segmentSize > data.size) {
            refuse("file is ${data.size} bytes but its header says the data ends at byte ${segmentBase + segmentSize} (truncated)")
        }
        try {
            val root = Table(buf, buf.getInt(0))
            val segments = root.tables(1).map { it.long(0) to it.long(1) }
            val out = LinkedHashMap<String, Entry>()
            for (named in root.tables(2)) {
                val key = named.string(0)
                val layout = named.table(2)
                val index = named.int(1)
                if (layout == null || index < 0 || index >= segments.size) refuse("tensor '$key' has no layout or no data segment")
                val code = layout.byte(0)
                val (dtype, size) = SCALAR_TYPES[code] ?: refuse("tensor '$key' has ExecuTorch scalar type $code; adapter files hold float32")
                val shape = layout.ints(1).map { it.toLong() }.toLongArray()
                val (offset, bytes) = segments[index]
                val expected = shape.fold(size.toLong()) { a, b -> a * b }
                if (bytes != expected || segmentBase + offset + bytes > data.size) {
                    refuse("tensor '$key': segment of $bytes bytes for shape ${shape.toList()} ($expected expected) or past the end of the file")
                }
                out[key] = Entry(key, dtype, shape, segmentBase + offset, bytes)
            }
            return out
        } catch (e: IndexOutOfBoundsException) {
            refuse("damaged FlatTensor metadata (${e.message})")
        }
    }

    /** A flatbuffer table: fields through its vtable; every read is bounds-checked by ByteBuffer. */
    private class Table(val buf: ByteBuffer, val pos: Int) {
        private val vtable = pos - buf.getInt(pos)
        private val vtableLength = buf.getShort(vtable).toInt() and 0xFFFF

        private fun field(index: Int): Int? {
            val slot = 4 + 2 * index
            if (slot >= vtableLength) return null
            val rel = buf.getShort(vtable + slot).toInt() and 0xFFFF
            return if (rel == 0) null else pos + rel
        }

        private fun target(index: Int): Int? = field(index)?.let { it + buf.getInt(it) }

        fun byte(index: Int): Int = field(index)?.let { buf.get(it).toInt() } ?: 0
        fun int(index: Int): Int = field(index)?.let { buf.getInt(it) } ?: 0
        fun long(index: Int): Long = field(index)?.let { buf.getLong(it) } ?: 0L
        fun table(index: Int): Table? = target(index)?.let { Table(buf, it) }

        fun string(index: Int): String {
            val at = target(index) ?: return ""
            val n = buf.getInt(at)
            if (n < 0 || at + 4 + n > buf.limit()) throw IndexOutOfBoundsException("string past the end")
            return String(buf.array(), at + 4, n, Charsets.UTF_8)
        }

        fun ints(index: Int): List<Int> {
            val at = target(index) ?: return emptyList()
            return (0 until buf.getInt(at)).map { buf.getInt(at + 4 + 4 * it) }
        }

        fun tables(index: Int): List<Table> {
            val at = target(index) ?: return emptyList()
            return (0 until buf.getInt(at)).map { k -> val e = at + 4 + 4 * k; Table(buf, e + buf.getInt(e)) }
        }
    }
}
