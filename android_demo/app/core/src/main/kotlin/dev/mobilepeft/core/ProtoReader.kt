package dev.mobilepeft.core

import java.io.RandomAccessFile

class ProtoError(message: String) : RuntimeException(message)

/** The bytes a [ProtoReader] walks: an array in memory, or a file read in place ([FileBytes]). */
interface ProtoBytes {
    /** The byte at [pos], 0..255. */
    fun byteAt(pos: Long): Int
    fun copy(pos: Long, n: Int): ByteArray
}

class ArrayBytes(private val buf: ByteArray) : ProtoBytes {
    override fun byteAt(pos: Long): Int = buf[pos.toInt()].toInt() and 0xFF
    override fun copy(pos: Long, n: Int): ByteArray = buf.copyOfRange(pos.toInt(), pos.toInt() + n)
}

/**
 * A file read where it lies, through a small window: a model over 2 GB (more than one array holds) is
 * walked field by field, and what is not asked for is stepped over unread.
 */
class FileBytes(private val file: RandomAccessFile) : ProtoBytes {
    private val window = ByteArray(1 shl 16)
    private var windowStart = 0L
    private var windowLength = 0

    override fun byteAt(pos: Long): Int {
        if (pos < windowStart || pos >= windowStart + windowLength) {
            file.seek(pos)
            windowStart = pos
            windowLength = maxOf(file.read(window), 0)
            if (windowLength == 0) throw ProtoError("the file ends at byte $pos")
        }
        return window[(pos - windowStart).toInt()].toInt() and 0xFF
    }

    override fun copy(pos: Long, n: Int): ByteArray {
        if (pos < 0 || pos + n > file.length()) throw ProtoError("bytes $pos..${pos + n} lie past the end of the file (${file.length()})")
        val out = ByteArray(n)
        file.seek(pos)
        file.readFully(out)
        return out
    }
}

/**
 * Protocol-buffer wire format reader over a byte range of [source] (varint, fixed32, length-delimited).
 * Positions are Long and a length-delimited field can be stepped over or located ([span]) without being
 * read, so a message larger than any array is walked in place.
 */
class ProtoReader(val source: ProtoBytes, private var pos: Long, private val end: Long) {
    constructor(buf: ByteArray, pos: Int, end: Int) : this(ArrayBytes(buf), pos.toLong(), end.toLong())

    fun hasMore(): Boolean = pos < end

    fun varint(): Long {
        var result = 0L
        var shift = 0
        while (true) {
            if (pos >= end) throw ProtoError("truncated varint at byte $pos")
            val b = source.byteAt(pos++)
            result = result or ((b and 0x7F).toLong() shl shift)
            if (b and 0x80 == 0) return result
            shift += 7
            if (shift >= 64) throw ProtoError("varint too long at byte $pos")
        }
    }

    /** (field number, wire type) of the next field. */
    fun tag(): Pair<Int, Int> {
        val t = varint()
        val field = (t ushr 3).toInt()
        if (field <= 0) throw ProtoError("bad field number at byte $pos")
        return Pair(field, (t and 7).toInt())
    }

    fun fixed32(): Int {
        if (pos + 4 > end) throw ProtoError("truncated fixed32 at byte $pos")
        var v = 0
        for (k in 0 until 4) v = v or (source.byteAt(pos + k) shl (8 * k))
        pos += 4
        return v
    }

    private fun length(): Long {
        val n = varint()
        if (n < 0 || n > end - pos) throw ProtoError("length $n runs past the end at byte $pos")
        return n
    }

    fun bytes(): ByteArray {
        val n = length()
        if (n > Int.MAX_VALUE - 8) throw ProtoError("a field of $n bytes at byte $pos is larger than one array")
        val out = source.copy(pos, n.toInt())
        pos += n
        return out
    }

    /** Start offset and length of a length-delimited field in [source], stepped over without being read. */
    fun span(): LongArray {
        val n = length()
        val start = pos
        pos += n
        return longArrayOf(start, n)
    }

    fun string(): String = String(bytes(), Charsets.UTF_8)

    fun message(): ProtoReader {
        val n = length()
        val r = ProtoReader(source, pos, pos + n)
        pos += n
        return r
    }

    fun skip(wire: Int) {
        when (wire) {
            0 -> varint()
            1 -> { if (pos + 8 > end) throw ProtoError("truncated fixed64"); pos += 8 }
            2 -> { val n = length(); pos += n }
            5 -> { if (pos + 4 > end) throw ProtoError("truncated fixed32"); pos += 4 }
            else -> throw ProtoError("unsupported wire type $wire at byte $pos")
        }
    }
}
