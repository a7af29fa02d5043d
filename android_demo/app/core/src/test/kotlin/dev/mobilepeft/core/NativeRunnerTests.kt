package dev.mobilepeft.core

import java.io.File

/**
 * The native runner in this JVM through JNI (runner/src/jni_bridge.cpp, built on the host by
 * tests/test_android_core.py): its answers equal the Python ExecuTorch runtime's with the bundle's own
 * adapter and, after an in-place swap, with the ORT-trained adapter file; a foreign file is refused naming
 * the tensor and the swapped-in adapter stays active.
 */
fun nativeRunnerTests(): List<TestCase> = listOf(
    TestCase("native runner: answers, swaps the personalized adapter in place, refuses a foreign file") { fx ->
        val native = fx.json("native.json")
        if (!native.has("library")) fail("no JNI library was built (a JDK's jni.h is needed)")
        NativeRunner.loadLibrary(native.o("library").str())
        val runner = NativeRunner.open(fx.file("et_adapter_bundle"), 1)
        try {
            check(runner.keepsAdapterAsData) { "the fixture bundle keeps its adapter as data" }
            val questions = native.o("questions").arr()
            fun answers() = questions.map { runner.answer(it.o("prompt").str(), fx.file(it.o("image").str()), 8) }
            assertEq(native.o("expected_bundle_adapter").arr().map { it.str() }, answers(), "answers with the bundle's adapter")
            val rssBefore = runner.rssMb
            val ms = runner.swap(fx.file("expected_adapter.ptd"))
            check(ms >= 0.0) { "swap time $ms" }
            val personal = native.o("expected_personal_adapter").arr().map { it.str() }
            assertEq(personal, answers(), "answers after swapping in the ORT-trained adapter")
            check(runner.rssMb - rssBefore < 16.0) { "RSS grew from $rssBefore to ${runner.rssMb} MB: was the base reloaded?" }
            val foreign = fx.json("foreign_ptd.json").arr().first { it.o("case").str() == "shape" }
            val error = assertThrows<BundleError>("foreign file") { runner.swap(fx.file(foreign.o("file").str())) }
            check((error.message ?: "").contains(foreign.o("tensor").str())) { "names the tensor: ${error.message}" }
            assertEq(personal, answers(), "the swapped-in adapter stays after a refused file")
        } finally {
            runner.close()
        }
    }
)
