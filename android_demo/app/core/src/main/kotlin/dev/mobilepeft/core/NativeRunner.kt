package dev.mobilepeft.core

import java.io.File

/**
 * The native runner (runner/, C++) in the app's process through JNI (`libmobilepeft_jni.so`): the bundle's
 * ExecuTorch program loaded once, answers at deployment speed, and the personalized adapter swapped in place
 * (`AdapterSlot`: checked against the manifest, copied over the live tensors; the base is never reloaded).
 * The Personalize screen answers with it after writing `adapter.ptd` (docs/on-device-loop.md).
 */
class NativeRunner private constructor(private var handle: Long) : java.io.Closeable {
    /** Whether the bundle keeps its adapter as data (exported with `--adapter-as-data`), so [swap] works. */
    val keepsAdapterAsData: Boolean
        get() = NativeRunnerJni.nativeKeepsAdapterAsData(live())

    /** Replace the active adapter with `adapter` (an `adapter.ptd` for this bundle); the time it took in ms.
     *  A file that does not fit is refused with a [BundleError] naming the tensor, and the active adapter stays. */
    fun swap(adapter: File): Double = NativeRunnerJni.nativeSwap(live(), adapter.path)

    /** A greedy answer in a fresh conversation; `image`: binary PPM, or raw float32 pixel values (`.f32`). */
    fun answer(prompt: String, image: File?, maxNewTokens: Int = 32): String =
        String(NativeRunnerJni.nativeAnswer(live(), prompt, image?.path ?: "", maxNewTokens), Charsets.UTF_8)

    /** The process's resident memory now, in MB (VmRSS). */
    val rssMb: Double
        get() = NativeRunnerJni.nativeRssMb()

    override fun close() {
        if (handle != 0L) NativeRunnerJni.nativeClose(handle)
        handle = 0L
    }

    private fun live(): Long {
        if (handle == 0L) throw IllegalStateException("the native runner is closed")
        return handle
    }

    companion object {
        const val LIBRARY = "mobilepeft_jni"

        /** Load the JNI library: from the APK by name, or from a path (host tests). */
        fun loadLibrary(path: String? = null) {
            if (path == null) System.loadLibrary(LIBRARY) else System.load(path)
        }

        /** `pixels` (a preprocessed photo, [1, 3, S, S]) as the raw float32 file [answer] takes. */
        fun pixelFile(pixels: FloatArray, file: File): File {
            val buf = java.nio.ByteBuffer.allocate(4 * pixels.size).order(java.nio.ByteOrder.LITTLE_ENDIAN)
            for (v in pixels) buf.putFloat(v)
            AtomicFile.write(file, buf.array())
            return file
        }

        /** Verify the bundle's files and load its program with `threads` XNNPACK threads. */
        fun open(bundleDir: File, threads: Int): NativeRunner = NativeRunner(NativeRunnerJni.nativeOpen(bundleDir.path, threads))
    }
}

/** The JNI entry points (runner/src/jni_bridge.cpp); errors arrive as [BundleError]. */
internal object NativeRunnerJni {
    @JvmStatic external fun nativeOpen(dir: String, threads: Int): Long
    @JvmStatic external fun nativeKeepsAdapterAsData(handle: Long): Boolean
    @JvmStatic external fun nativeSwap(handle: Long, path: String): Double
    @JvmStatic external fun nativeAnswer(handle: Long, prompt: String, image: String, maxNewTokens: Int): ByteArray
    @JvmStatic external fun nativeRssMb(): Double
    @JvmStatic external fun nativeClose(handle: Long)
}
