package dev.mobilepeft.core

/**
 * A small, strict JSON (RFC 8259) parser and writer.
 *
 * Strict: no comments, no trailing commas, no leading zeros, no NaN/Infinity, no duplicate keys,
 * no raw control characters in strings, no lone surrogates, nothing after the value.
 * Every parse error says the character offset where it happened.
 * Objects keep their key order (the writer writes keys in insertion order, so output is stable).
 */
sealed class JsonValue {
    /** A short name of the value's kind, for error messages ("an object", "a string", ...). */
    abstract val kind: String
}

class JsonObject(val fields: LinkedHashMap<String, JsonValue>) : JsonValue() {
    override val kind: String get() = "an object"
    operator fun get(key: String): JsonValue? = fields[key]
}

class JsonArray(val items: List<JsonValue>) : JsonValue() {
    override val kind: String get() = "an array"
}

class JsonString(val value: String) : JsonValue() {
    override val kind: String get() = "a string"
}

/** A number, kept as its source text so integers of any size and doubles both round-trip exactly. */
class JsonNumber(val text: String) : JsonValue() {
    override val kind: String get() = if (isInteger) "an integer" else "a number"
    val isInteger: Boolean get() = text.indexOf('.') < 0 && text.indexOf('e') < 0 && text.indexOf('E') < 0
    fun toDouble(): Double = text.toDouble()
    /** The integer value, or null when the number has a fraction/exponent or does not fit a Long. */
    fun toLongOrNull(): Long? = if (isInteger) text.toLongOrNull() else null
}

class JsonBool(val value: Boolean) : JsonValue() {
    override val kind: String get() = "a boolean"
}

object JsonNull : JsonValue() {
    override val kind: String get() = "null"
}

class JsonError(message: String) : RuntimeException(message)

object Json {
    fun parse(text: String): JsonValue = Parser(text).parseDocument()

    /** Compact (`indent` = 0) or pretty-printed JSON text of [value]. */
    fun write(value: JsonValue, indent: Int = 0): String {
        val out = StringBuilder()
        writeValue(value, out, indent, 0)
        return out.toString()
    }

    fun quote(s: String): String {
        val out = StringBuilder(s.length + 2)
        writeString(s, out)
        return out.toString()
    }

    private fun writeValue(value: JsonValue, out: StringBuilder, indent: Int, depth: Int) {
        when (value) {
            is JsonObject -> {
                if (value.fields.isEmpty()) {
                    out.append("{}")
                    return
                }
                out.append('{')
                var first = true
                for ((k, v) in value.fields) {
                    if (!first) out.append(',')
                    first = false
                    newline(out, indent, depth + 1)
                    writeString(k, out)
                    out.append(if (indent > 0) ": " else ":")
                    writeValue(v, out, indent, depth + 1)
                }
                newline(out, indent, depth)
                out.append('}')
            }
            is JsonArray -> {
                if (value.items.isEmpty()) {
                    out.append("[]")
                    return
                }
                out.append('[')
                for ((i, v) in value.items.withIndex()) {
                    if (i > 0) out.append(',')
                    newline(out, indent, depth + 1)
                    writeValue(v, out, indent, depth + 1)
                }
                newline(out, indent, depth)
                out.append(']')
            }
            is JsonString -> writeString(value.value, out)
            is JsonNumber -> out.append(value.text)
            is JsonBool -> out.append(if (value.value) "true" else "false")
            is JsonNull -> out.append("null")
        }
    }

    private fun newline(out: StringBuilder, indent: Int, depth: Int) {
        if (indent <= 0) return
        out.append('\n')
        for (i in 0 until indent * depth) out.append(' ')
    }

    private fun writeString(s: String, out: StringBuilder) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c == '\b' -> out.append("\\b")
                c == '\u000C' -> out.append("\\f")
                c.toInt() < 0x20 || c == '\u2028' || c == '\u2029' -> {
                    out.append("\\u")
                    val hex = Integer.toHexString(c.toInt())
                    for (i in hex.length until 4) out.append('0')
                    out.append(hex)
                }
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    /** A JSON number for a finite double; NaN and infinities have no JSON form and raise. */
    fun number(value: Double): JsonNumber {
        if (value.isNaN() || value.isInfinite()) throw JsonError("$value cannot be written as JSON")
        if (value == Math.rint(value) && Math.abs(value) < 1e15) {
            // Integral values keep a ".0" so readers see a float, as Python's json does.
            return JsonNumber(value.toLong().toString() + ".0")
        }
        return JsonNumber(value.toString())
    }

    fun number(value: Long): JsonNumber = JsonNumber(value.toString())

    private class Parser(val s: String) {
        var pos = 0

        fun fail(message: String, at: Int = pos): Nothing = throw JsonError("invalid JSON at offset $at: $message")

        fun parseDocument(): JsonValue {
            skipWs()
            val v = parseValue(0)
            skipWs()
            if (pos < s.length) fail("unexpected '${s[pos]}' after the JSON value")
            return v
        }

        fun skipWs() {
            while (pos < s.length) {
                val c = s[pos]
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++ else break
            }
        }

        fun parseValue(depth: Int): JsonValue {
            if (depth > 512) fail("nesting deeper than 512")
            if (pos >= s.length) fail("unexpected end of input, expected a value")
            val c = s[pos]
            return when {
                c == '{' -> parseObject(depth)
                c == '[' -> parseArray(depth)
                c == '"' -> JsonString(parseString())
                c == '-' || (c in '0'..'9') -> parseNumber()
                s.startsWith("true", pos) -> { pos += 4; JsonBool(true) }
                s.startsWith("false", pos) -> { pos += 5; JsonBool(false) }
                s.startsWith("null", pos) -> { pos += 4; JsonNull }
                else -> fail("unexpected '$c', expected a value")
            }
        }

        fun parseObject(depth: Int): JsonObject {
            pos++ // {
            val fields = LinkedHashMap<String, JsonValue>()
            skipWs()
            if (pos < s.length && s[pos] == '}') {
                pos++
                return JsonObject(fields)
            }
            while (true) {
                skipWs()
                if (pos >= s.length || s[pos] != '"') fail("expected a string key")
                val keyAt = pos
                val key = parseString()
                if (fields.containsKey(key)) fail("duplicate key \"$key\"", keyAt)
                skipWs()
                if (pos >= s.length || s[pos] != ':') fail("expected ':' after a key")
                pos++
                skipWs()
                fields[key] = parseValue(depth + 1)
                skipWs()
                if (pos >= s.length) fail("unexpected end of input in an object")
                when (s[pos]) {
                    ',' -> pos++
                    '}' -> { pos++; return JsonObject(fields) }
                    else -> fail("expected ',' or '}' in an object")
                }
            }
        }

        fun parseArray(depth: Int): JsonArray {
            pos++ // [
            val items = ArrayList<JsonValue>()
            skipWs()
            if (pos < s.length && s[pos] == ']') {
                pos++
                return JsonArray(items)
            }
            while (true) {
                skipWs()
                items.add(parseValue(depth + 1))
                skipWs()
                if (pos >= s.length) fail("unexpected end of input in an array")
                when (s[pos]) {
                    ',' -> pos++
                    ']' -> { pos++; return JsonArray(items) }
                    else -> fail("expected ',' or ']' in an array")
                }
            }
        }

        fun hex4(): Int {
            if (pos + 4 > s.length) fail("truncated \\u escape")
            var v = 0
            for (i in 0 until 4) {
                val d = Character.digit(s[pos + i], 16)
                if (d < 0) fail("bad hex digit '${s[pos + i]}' in a \\u escape", pos + i)
                v = v * 16 + d
            }
            pos += 4
            return v
        }

        fun parseString(): String {
            pos++ // opening quote
            val out = StringBuilder()
            while (true) {
                if (pos >= s.length) fail("unterminated string")
                val c = s[pos]
                when {
                    c == '"' -> { pos++; return out.toString() }
                    c == '\\' -> {
                        val escAt = pos
                        pos++
                        if (pos >= s.length) fail("unterminated escape")
                        val e = s[pos]
                        pos++
                        when (e) {
                            '"' -> out.append('"')
                            '\\' -> out.append('\\')
                            '/' -> out.append('/')
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000C')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                val u = hex4()
                                if (u in 0xD800..0xDBFF) {
                                    if (!(s.startsWith("\\u", pos))) fail("high surrogate without a low surrogate", escAt)
                                    pos += 2
                                    val low = hex4()
                                    if (low !in 0xDC00..0xDFFF) fail("high surrogate without a low surrogate", escAt)
                                    out.append(u.toChar()).append(low.toChar())
                                } else if (u in 0xDC00..0xDFFF) {
                                    fail("lone low surrogate", escAt)
                                } else {
                                    out.append(u.toChar())
                                }
                            }
                            else -> fail("bad escape '\\$e'", escAt)
                        }
                    }
                    c.toInt() < 0x20 -> fail("raw control character (code ${c.toInt()}) in a string")
                    Character.isHighSurrogate(c) -> {
                        if (pos + 1 >= s.length || !Character.isLowSurrogate(s[pos + 1])) fail("lone surrogate in a string")
                        out.append(c).append(s[pos + 1])
                        pos += 2
                    }
                    Character.isLowSurrogate(c) -> fail("lone surrogate in a string")
                    else -> { out.append(c); pos++ }
                }
            }
        }

        fun parseNumber(): JsonNumber {
            val start = pos
            if (s[pos] == '-') pos++
            if (pos >= s.length) fail("truncated number", start)
            if (s[pos] == '0') {
                pos++
                if (pos < s.length && s[pos] in '0'..'9') fail("leading zero in a number", start)
            } else if (s[pos] in '1'..'9') {
                while (pos < s.length && s[pos] in '0'..'9') pos++
            } else {
                fail("expected a digit", pos)
            }
            if (pos < s.length && s[pos] == '.') {
                pos++
                if (pos >= s.length || s[pos] !in '0'..'9') fail("expected a digit after '.'", pos)
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                pos++
                if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos++
                if (pos >= s.length || s[pos] !in '0'..'9') fail("expected a digit in the exponent", pos)
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            return JsonNumber(s.substring(start, pos))
        }
    }
}

/** Builds a JSON object in insertion order: `put("key", value)`. */
class JsonObjectBuilder {
    private val fields = LinkedHashMap<String, JsonValue>()

    fun put(key: String, value: String): JsonObjectBuilder = putValue(key, JsonString(value))
    fun put(key: String, value: Int): JsonObjectBuilder = putValue(key, Json.number(value.toLong()))
    fun put(key: String, value: Long): JsonObjectBuilder = putValue(key, Json.number(value))
    fun put(key: String, value: Double): JsonObjectBuilder = putValue(key, Json.number(value))
    fun put(key: String, value: Boolean): JsonObjectBuilder = putValue(key, JsonBool(value))
    fun put(key: String, value: JsonValue): JsonObjectBuilder = putValue(key, value)

    private fun putValue(key: String, value: JsonValue): JsonObjectBuilder {
        if (fields.containsKey(key)) throw JsonError("key \"$key\" written twice")
        fields[key] = value
        return this
    }

    fun build(): JsonObject = JsonObject(LinkedHashMap(fields))
}
