package dev.mobilepeft.core

import java.io.File
import java.util.PriorityQueue

/** Text <-> ids; `encode` never adds BOS/EOS (the conversation template places them). */
interface TextTokenizer {
    val bosId: Int
    val eosId: Int
    val vocabSize: Int
    fun encode(text: String): IntArray
    fun decode(ids: IntArray): String
}

class TokenizerError(message: String) : RuntimeException(message)

/**
 * SentencePiece BPE (LLaMA's tokenizer) read from `tokenizer.model`, matching the sentencepiece
 * library id for id: identity normaliser (+ dummy prefix, whitespace escaping, optional removal of
 * extra whitespace), user-defined pieces as whole symbols, highest-score merges first (leftmost on
 * ties), UNUSED pieces re-split, unknown symbols to `<0xXX>` byte pieces (byte_fallback) or unk.
 */
class SentencePieceTokenizer private constructor(
    private val pieces: Array<String>,
    private val scores: FloatArray,
    private val types: IntArray,
    val addDummyPrefix: Boolean,
    val removeExtraWhitespaces: Boolean,
    val escapeWhitespaces: Boolean,
    val byteFallback: Boolean,
    private val unkSurface: String,
    private val source: String
) : TextTokenizer {

    companion object {
        const val NORMAL = 1
        const val UNKNOWN = 2
        const val CONTROL = 3
        const val USER_DEFINED = 4
        const val UNUSED = 5
        const val BYTE = 6
        const val SPACE = "\u2581"

        fun load(file: File): SentencePieceTokenizer {
            if (!file.isFile) throw TokenizerError("${file.path}: tokenizer model not found")
            return parse(file.readBytes(), file.path)
        }

        fun parse(bytes: ByteArray, source: String = "tokenizer.model"): SentencePieceTokenizer {
            val pieceList = ArrayList<String>()
            val scoreList = ArrayList<Float>()
            val typeList = ArrayList<Int>()
            var normalizerName: String? = null
            var addDummyPrefix = true
            var removeExtra = true
            var escapeWs = true
            var modelType = 1 // UNIGRAM is the proto default
            var byteFallback = false
            var suffix = false
            var unkSurface = " \u2047 "
            try {
                val top = ProtoReader(bytes, 0, bytes.size)
                while (top.hasMore()) {
                    val (field, wire) = top.tag()
                    when {
                        field == 1 && wire == 2 -> {
                            val r = top.message()
                            var piece = ""
                            var score = 0f
                            var type = NORMAL
                            while (r.hasMore()) {
                                val (f, w) = r.tag()
                                when {
                                    f == 1 && w == 2 -> piece = r.string()
                                    f == 2 && w == 5 -> score = java.lang.Float.intBitsToFloat(r.fixed32())
                                    f == 3 && w == 0 -> type = r.varint().toInt()
                                    else -> r.skip(w)
                                }
                            }
                            pieceList.add(piece)
                            scoreList.add(score)
                            typeList.add(type)
                        }
                        field == 2 && wire == 2 -> {
                            val r = top.message()
                            while (r.hasMore()) {
                                val (f, w) = r.tag()
                                when {
                                    f == 3 && w == 0 -> modelType = r.varint().toInt()
                                    f == 24 && w == 0 -> suffix = r.varint() != 0L
                                    f == 35 && w == 0 -> byteFallback = r.varint() != 0L
                                    f == 44 && w == 2 -> unkSurface = r.string()
                                    else -> r.skip(w)
                                }
                            }
                        }
                        field == 3 && wire == 2 -> {
                            val r = top.message()
                            while (r.hasMore()) {
                                val (f, w) = r.tag()
                                when {
                                    f == 1 && w == 2 -> normalizerName = r.string()
                                    f == 3 && w == 0 -> addDummyPrefix = r.varint() != 0L
                                    f == 4 && w == 0 -> removeExtra = r.varint() != 0L
                                    f == 5 && w == 0 -> escapeWs = r.varint() != 0L
                                    else -> r.skip(w)
                                }
                            }
                        }
                        else -> top.skip(wire)
                    }
                }
            } catch (e: ProtoError) {
                throw TokenizerError("$source: not a SentencePiece model (${e.message})")
            }
            if (pieceList.isEmpty()) throw TokenizerError("$source: the SentencePiece model has no pieces")
            if (normalizerName != "identity") {
                throw TokenizerError("$source: normalizer '${normalizerName ?: "(none)"}' is not supported; " +
                    "this tokenizer implements the 'identity' normalizer that LLaMA/MobileVLM tokenizers use")
            }
            if (modelType != 2) {
                throw TokenizerError("$source: model_type $modelType is not BPE (2); LLaMA/MobileVLM tokenizers are BPE")
            }
            if (suffix) throw TokenizerError("$source: treat_whitespace_as_suffix is not supported")
            if (typeList.count { it == UNKNOWN } != 1) throw TokenizerError("$source: the model must have exactly one unknown piece")
            return SentencePieceTokenizer(pieceList.toTypedArray(), scoreList.toFloatArray(), typeList.toIntArray(),
                addDummyPrefix, removeExtra, escapeWs, byteFallback, unkSurface, source)
        }
    }

    /** Merge-able pieces (NORMAL, USER_DEFINED, UNUSED), as sentencepiece's pieces_ map. */
    private val normalIds = HashMap<String, Int>()
    /** CONTROL, UNKNOWN and BYTE pieces (looked up first, as sentencepiece's reserved_id_map_). */
    private val reservedIds = HashMap<String, Int>()
    private val userDefined: List<String>
    private val byteIds = IntArray(256) { -1 }
    val unkId: Int

    init {
        var unk = -1
        val user = ArrayList<String>()
        for (i in pieces.indices) {
            val t = types[i]
            if (t == NORMAL || t == USER_DEFINED || t == UNUSED) normalIds[pieces[i]] = i else reservedIds[pieces[i]] = i
            if (t == USER_DEFINED) user.add(pieces[i])
            if (t == UNKNOWN) unk = i
            if (t == BYTE) {
                val p = pieces[i]
                if (p.length == 6 && p.startsWith("<0x") && p.endsWith(">")) {
                    val b = p.substring(3, 5).toIntOrNull(16)
                    if (b != null) byteIds[b] = i
                }
            }
        }
        unkId = unk
        userDefined = user.sortedByDescending { it.length }
        if (byteFallback && byteIds.any { it < 0 }) throw TokenizerError("$source: byte_fallback is on but <0x00>..<0xFF> are not all present")
    }

    override val vocabSize: Int get() = pieces.size
    override val bosId: Int get() = pieceToId("<s>").let { if (types[it] == CONTROL) it else -1 }
    override val eosId: Int get() = pieceToId("</s>").let { if (types[it] == CONTROL) it else -1 }

    fun piece(id: Int): String = pieces[id]
    fun type(id: Int): Int = types[id]

    fun pieceToId(piece: String): Int = reservedIds[piece] ?: normalIds[piece] ?: unkId

    /** sentencepiece's identity normalizer: whitespace handling only, no Unicode mapping. */
    fun normalize(text: String): String {
        var start = 0
        if (removeExtraWhitespaces) while (start < text.length && text[start] == ' ') start++
        if (start >= text.length) return ""
        val out = StringBuilder(text.length + 8)
        if (addDummyPrefix) out.append(if (escapeWhitespaces) SPACE else " ")
        var prevSpace = removeExtraWhitespaces
        for (i in start until text.length) {
            val c = text[i]
            if (c == ' ') {
                if (prevSpace) continue
                out.append(if (escapeWhitespaces) SPACE else " ")
                prevSpace = removeExtraWhitespaces
            } else {
                out.append(c)
                prevSpace = false
            }
        }
        if (removeExtraWhitespaces) {
            val sp = if (escapeWhitespaces) SPACE else " "
            while (out.length >= sp.length && out.endsWith(sp)) out.setLength(out.length - sp.length)
        }
        return out.toString()
    }

    private class Symbol(var start: Int, var end: Int, var prev: Int, var next: Int, val freeze: Boolean) {
        val length: Int get() = end - start
    }

    private class MergeCandidate(val left: Int, val right: Int, val score: Float, val size: Int)

    override fun encode(text: String): IntArray {
        val normalized = normalize(text)
        if (normalized.length == 0) return IntArray(0)
        // Split into characters (code points), user-defined pieces first as whole frozen symbols.
        val symbols = ArrayList<Symbol>()
        var pos = 0
        while (pos < normalized.length) {
            var len = 0
            var freeze = false
            for (u in userDefined) {
                if (normalized.startsWith(u, pos)) {
                    len = u.length
                    freeze = true
                    break
                }
            }
            if (len == 0) len = Character.charCount(normalized.codePointAt(pos))
            val index = symbols.size
            symbols.add(Symbol(pos, pos + len, index - 1, if (pos + len >= normalized.length) -1 else index + 1, freeze))
            pos += len
        }
        val agenda = PriorityQueue<MergeCandidate>(Comparator { a, b ->
            when {
                a.score != b.score -> if (a.score > b.score) -1 else 1
                else -> a.left.compareTo(b.left)
            }
        })
        val revMerge = HashMap<String, Pair<String, String>>()
        fun maybeAdd(left: Int, right: Int) {
            if (left == -1 || right == -1 || symbols[left].freeze || symbols[right].freeze) return
            val piece = normalized.substring(symbols[left].start, symbols[right].end)
            val id = normalIds[piece] ?: return
            agenda.add(MergeCandidate(left, right, scores[id], piece.length))
            if (types[id] == UNUSED) {
                revMerge[piece] = Pair(normalized.substring(symbols[left].start, symbols[left].end),
                    normalized.substring(symbols[right].start, symbols[right].end))
            }
        }
        for (i in 1 until symbols.size) maybeAdd(i - 1, i)
        while (agenda.isNotEmpty()) {
            val top = agenda.poll()
            val l = symbols[top.left]
            val r = symbols[top.right]
            if (l.length == 0 || r.length == 0 || l.length + r.length != top.size) continue
            l.end = r.end
            r.start = r.end // empty
            l.next = r.next
            if (r.next >= 0) symbols[r.next].prev = top.left
            maybeAdd(l.prev, top.left)
            maybeAdd(top.left, l.next)
        }
        val out = ArrayList<Int>()
        var prevUnk = false
        fun emit(piece: String) {
            val id = pieceToId(piece)
            val isUnk = id == unkId
            if (isUnk && byteFallback) {
                for (b in piece.toByteArray(Charsets.UTF_8)) out.add(byteIds[b.toInt() and 0xFF])
                prevUnk = false
                return
            }
            if (!(isUnk && prevUnk)) out.add(id) // a run of unknown symbols is one unk
            prevUnk = isUnk
        }
        fun resegment(piece: String) {
            val id = pieceToId(piece)
            val split = if (types[id] == UNUSED && id != unkId) revMerge[piece] else null
            if (split == null) {
                emit(piece)
            } else {
                resegment(split.first)
                resegment(split.second)
            }
        }
        var index = 0
        while (index != -1) {
            val s = symbols[index]
            resegment(normalized.substring(s.start, s.end))
            index = s.next
        }
        return out.toIntArray()
    }

    /** sentencepiece's DecodeIds: control pieces vanish, byte pieces become UTF-8, one leading ▁ goes. */
    override fun decode(ids: IntArray): String {
        val text = StringBuilder()
        val bytes = java.io.ByteArrayOutputStream()
        var isBosWs = true
        var bosWsSeen = false
        fun flushBytes() {
            if (bytes.size() == 0) return
            text.append(decodeUtf8Lenient(bytes.toByteArray()))
            bytes.reset()
        }
        for (id in ids) {
            if (id < 0 || id >= pieces.size) throw TokenizerError("$source: id $id is out of range 0..${pieces.size - 1}")
            if (types[id] == BYTE) {
                val p = pieces[id]
                bytes.write(p.substring(3, 5).toInt(16))
                continue
            }
            flushBytes()
            if (bosWsSeen || text.isNotEmpty()) isBosWs = false
            var piece = pieces[id]
            bosWsSeen = false
            when (types[id]) {
                CONTROL -> piece = ""
                UNKNOWN -> piece = unkSurface
                else -> {
                    if (isBosWs && (addDummyPrefix || removeExtraWhitespaces) && piece.startsWith(SPACE)) {
                        piece = piece.substring(SPACE.length)
                        bosWsSeen = !removeExtraWhitespaces
                    }
                    piece = piece.replace(SPACE, " ")
                }
            }
            text.append(piece)
        }
        flushBytes()
        return text.toString()
    }
}

/** UTF-8 to text, one U+FFFD per byte that does not start a valid sequence (as sentencepiece does). */
internal fun decodeUtf8Lenient(b: ByteArray): String {
    val out = StringBuilder()
    var i = 0
    while (i < b.size) {
        val c0 = b[i].toInt() and 0xFF
        var n = 0
        var cp = 0
        var min = 0
        when {
            c0 < 0x80 -> { n = 1; cp = c0 }
            c0 in 0xC2..0xDF -> { n = 2; cp = c0 and 0x1F; min = 0x80 }
            c0 in 0xE0..0xEF -> { n = 3; cp = c0 and 0x0F; min = 0x800 }
            c0 in 0xF0..0xF4 -> { n = 4; cp = c0 and 0x07; min = 0x10000 }
        }
        var ok = n > 0 && i + n <= b.size
        if (ok) {
            for (k in 1 until n) {
                val ck = b[i + k].toInt() and 0xFF
                if (ck and 0xC0 != 0x80) { ok = false; break }
                cp = (cp shl 6) or (ck and 0x3F)
            }
        }
        if (ok && n > 1 && (cp < min || cp > 0x10FFFF || cp in 0xD800..0xDFFF)) ok = false
        if (!ok) {
            out.append('\uFFFD')
            i += 1
        } else {
            out.appendCodePoint(cp)
            i += n
        }
    }
    return out.toString()
}
