package dev.mobilepeft.core

import java.io.File

/**
 * Typed access to a bundle's `manifest.json` (schema: mobilepeft/export/bundle.schema.json).
 *
 * Every read is `manifest.<fn>("<path>", args...)` with a literal path from the manifest root:
 * segments joined by `.`; a segment ending in `[]` is an array (the next vararg, an Int, is the
 * index); one ending in `{}` is an object with arbitrary keys (the next vararg, a String, is the
 * key). For [count] and [keys] the last segment names the container itself and takes no argument.
 * A test (tests/test_android_core.py) parses these calls out of the sources and checks every path
 * against the schema, so nothing else reads the manifest by key.
 */
class Manifest private constructor(private val root: JsonObject, val source: String) {

    companion object {
        const val FILE = "manifest.json"

        fun parse(text: String, source: String = FILE): Manifest {
            val value = try {
                Json.parse(text)
            } catch (e: JsonError) {
                throw BundleError("$source: ${e.message}")
            }
            if (value !is JsonObject) throw BundleError("$source: the manifest must be a JSON object, found ${value.kind}")
            return Manifest(value, source)
        }

        fun read(file: File): Manifest {
            if (!file.isFile) throw BundleError("${file.path}: not found (a bundle directory holds a $FILE)")
            return parse(file.readText(Charsets.UTF_8), file.path)
        }
    }

    private class Found(val value: JsonValue?, val where: String)

    private fun resolve(path: String, args: Array<out Any>, lastIsContainer: Boolean, forHas: Boolean = false): Found {
        val segments = path.split('.')
        var cur: JsonValue? = root
        val where = StringBuilder()
        var argIndex = 0
        for ((i, segment) in segments.withIndex()) {
            val last = i == segments.size - 1
            val suffix = when {
                segment.endsWith("[]") -> "[]"
                segment.endsWith("{}") -> "{}"
                else -> ""
            }
            val name = segment.substring(0, segment.length - suffix.length)
            require(name.isNotEmpty()) { "bad manifest path '$path'" }
            if (where.isNotEmpty()) where.append('.')
            where.append(name)
            val obj = cur
            if (obj !is JsonObject) {
                throw BundleError("$source: ${where.toString().substringBeforeLast('.')}: expected an object, found ${obj!!.kind}")
            }
            cur = obj[name]
            if (cur == null) {
                if (forHas) return Found(null, where.toString())
                throw BundleError("$source: missing field ${where}")
            }
            if (suffix.length == 0 || (last && lastIsContainer)) continue
            require(argIndex < args.size) { "manifest path '$path' needs an argument for '$segment'" }
            val arg = args[argIndex++]
            if (suffix == "[]") {
                val array = cur
                if (array !is JsonArray) throw BundleError("$source: $where: expected an array, found ${array.kind}")
                require(arg is Int) { "manifest path '$path': index for '$segment' must be an Int" }
                where.append('[').append(arg).append(']')
                if (arg < 0 || arg >= array.items.size) {
                    if (forHas) return Found(null, where.toString())
                    throw BundleError("$source: missing field $where (the array has ${array.items.size} items)")
                }
                cur = array.items[arg]
            } else {
                val map = cur
                if (map !is JsonObject) throw BundleError("$source: $where: expected an object, found ${map.kind}")
                require(arg is String) { "manifest path '$path': key for '$segment' must be a String" }
                where.append('.').append(arg)
                cur = map[arg]
                if (cur == null) {
                    if (forHas) return Found(null, where.toString())
                    throw BundleError("$source: missing field $where")
                }
            }
        }
        require(argIndex == args.size) { "manifest path '$path' got ${args.size} arguments, used $argIndex" }
        return Found(cur, where.toString())
    }

    private fun wrongType(found: Found, expected: String, actual: JsonValue): Nothing =
        throw BundleError("$source: ${found.where}: expected $expected, found ${actual.kind}")

    private fun get(path: String, args: Array<out Any>): Found = resolve(path, args, lastIsContainer = false)

    fun string(path: String, vararg args: Any): String {
        val f = get(path, args)
        val v = f.value!!
        return if (v is JsonString) v.value else wrongType(f, "a string", v)
    }

    fun long(path: String, vararg args: Any): Long {
        val f = get(path, args)
        return asLong(f, f.value!!)
    }

    fun int(path: String, vararg args: Any): Int {
        val f = get(path, args)
        val v = asLong(f, f.value!!)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw BundleError("$source: ${f.where}: $v is out of range")
        return v.toInt()
    }

    fun double(path: String, vararg args: Any): Double {
        val f = get(path, args)
        val v = f.value!!
        return if (v is JsonNumber) v.toDouble() else wrongType(f, "a number", v)
    }

    fun bool(path: String, vararg args: Any): Boolean {
        val f = get(path, args)
        val v = f.value!!
        return if (v is JsonBool) v.value else wrongType(f, "a boolean", v)
    }

    /** An array of strings; integer items (fixed dims in a shape such as ["batch", 3, 64, 64]) come as their decimal text. */
    fun strings(path: String, vararg args: Any): List<String> {
        val f = get(path, args)
        return array(f).map { item ->
            when {
                item is JsonString -> item.value
                item is JsonNumber && item.toLongOrNull() != null -> item.text
                else -> wrongType(f, "an array of strings", item)
            }
        }
    }

    fun longs(path: String, vararg args: Any): List<Long> {
        val f = get(path, args)
        return array(f).map { asLong(f, it, "an array of integers") }
    }

    fun ints(path: String, vararg args: Any): List<Int> = longs(path, *args).map {
        if (it < Int.MIN_VALUE || it > Int.MAX_VALUE) throw BundleError("$source: $path: $it is out of range")
        it.toInt()
    }

    fun doubles(path: String, vararg args: Any): List<Double> {
        val f = get(path, args)
        return array(f).map { if (it is JsonNumber) it.toDouble() else wrongType(f, "an array of numbers", it) }
    }

    /** Number of items of the array the path ends at (its last `[]` takes no index). */
    fun count(path: String, vararg args: Any): Int {
        val f = resolve(path, args, lastIsContainer = true)
        return array(f).size
    }

    /** Keys, in file order, of the object the path ends at (its last `{}` takes no key). */
    fun keys(path: String, vararg args: Any): List<String> {
        val f = resolve(path, args, lastIsContainer = true)
        val v = f.value!!
        return if (v is JsonObject) ArrayList(v.fields.keys) else wrongType(f, "an object", v)
    }

    /** Whether the field exists and is not null. */
    fun has(path: String, vararg args: Any): Boolean {
        val f = resolve(path, args, lastIsContainer = false, forHas = true)
        return f.value != null && f.value !is JsonNull
    }

    private fun array(f: Found): List<JsonValue> {
        val v = f.value!!
        return if (v is JsonArray) v.items else wrongType(f, "an array", v)
    }

    private fun asLong(f: Found, v: JsonValue, expected: String = "an integer"): Long {
        if (v is JsonNumber) {
            val l = v.toLongOrNull()
            if (l != null) return l
        }
        wrongType(f, expected, v)
    }
}
