package dev.mobilepeft.core

import java.io.File
import kotlin.system.exitProcess

/**
 * A dependency-free test harness (no JUnit here): `java -jar core-tests.jar <fixture dir>`.
 * Runs every test, prints each failure, ends with the line "N passed, N failed"; exit code 1 on any failure.
 * The fixture directory is written by tests/test_android_core.py with the real Python code.
 */
class TestCase(val name: String, val body: (Fixtures) -> Unit)

class Fixtures(val dir: File?) {
    fun file(name: String): File {
        val d = dir ?: throw AssertionError("needs the fixture directory (run via pytest tests/test_android_core.py)")
        val f = File(d, name)
        if (!f.exists()) throw AssertionError("fixture $name not found in $d")
        return f
    }

    fun json(name: String): JsonValue = Json.parse(file(name).readText(Charsets.UTF_8))

    val out: File
        get() {
            val d = dir ?: File(System.getProperty("java.io.tmpdir"), "mobilepeft-core-tests")
            val o = File(d, "out")
            o.mkdirs()
            return o
        }
}

class TestFailure(message: String) : AssertionError(message)

fun fail(message: String): Nothing = throw TestFailure(message)

fun check(condition: Boolean, message: () -> String) {
    if (!condition) fail(message())
}

fun <T> assertEq(expected: T, actual: T, what: String) {
    if (expected != actual) fail("$what: expected <$expected>, got <$actual>")
}

fun assertClose(expected: Double, actual: Double, tol: Double, what: String) {
    if (Math.abs(expected - actual) > tol) fail("$what: expected $expected ± $tol, got $actual")
}

inline fun <reified T : Throwable> assertThrows(what: String, body: () -> Unit): T {
    try {
        body()
    } catch (e: Throwable) {
        if (e is T) return e
        fail("$what: expected ${T::class.java.simpleName}, got ${e.javaClass.simpleName}: ${e.message}")
    }
    fail("$what: expected ${T::class.java.simpleName}, nothing was thrown")
}

// Fixture JSON helpers (test code only; the app reads manifests through Manifest).
fun JsonValue.o(key: String): JsonValue = (this as JsonObject)[key] ?: fail("fixture has no key '$key'")
fun JsonValue.arr(): List<JsonValue> = (this as JsonArray).items
fun JsonValue.str(): String = (this as JsonString).value
fun JsonValue.num(): Double = (this as JsonNumber).toDouble()
fun JsonValue.lng(): Long = (this as JsonNumber).toLongOrNull() ?: fail("not an integer: ${(this as JsonNumber).text}")
fun JsonValue.ints(): List<Int> = arr().map { it.lng().toInt() }
fun JsonValue.longs(): List<Long> = arr().map { it.lng() }
fun JsonValue.has(key: String): Boolean = (this as JsonObject)[key] != null

fun readFloats(file: File): FloatArray {
    val bb = java.nio.ByteBuffer.wrap(file.readBytes()).order(java.nio.ByteOrder.LITTLE_ENDIAN)
    return FloatArray(bb.remaining() / 4) { bb.getFloat(it * 4) }
}

fun readRgb(file: File, width: Int, height: Int): RgbImage {
    val b = file.readBytes()
    check(b.size == width * height * 3) { "${file.name}: ${b.size} bytes for ${width}x$height RGB" }
    return RgbImage(width, height, IntArray(width * height) {
        RgbImage.rgb(b[3 * it].toInt() and 0xFF, b[3 * it + 1].toInt() and 0xFF, b[3 * it + 2].toInt() and 0xFF)
    })
}

fun main(args: Array<String>) {
    val fixtures = Fixtures(if (args.isNotEmpty()) File(args[0]) else null)
    val tests = jsonTests() + manifestTests() + tokenizerTests() + conversationTests() + imageTests() +
        benchTests() + personalizerTests() + verifyTests() + adapterFileTests() + splitTests() + nativeRunnerTests()
    var passed = 0
    var failed = 0
    for (t in tests) {
        try {
            t.body(fixtures)
            passed++
            println("PASS ${t.name}")
        } catch (e: Throwable) {
            failed++
            println("FAIL ${t.name}: ${e.javaClass.simpleName}: ${e.message}")
            if (e !is AssertionError) e.printStackTrace(System.out)
        }
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
