package dev.mobilepeft.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.net.Uri
import android.os.Build
import android.provider.DocumentsContract
import android.system.ErrnoException
import android.system.Os
import android.system.StructTimespec
import android.util.AttributeSet
import android.view.View
import dev.mobilepeft.core.Bundle
import dev.mobilepeft.core.BundleVerifier
import dev.mobilepeft.core.FileIdentity
import dev.mobilepeft.core.Resizer
import dev.mobilepeft.core.RgbImage
import dev.mobilepeft.core.Verification
import java.io.File

/** Android's filtered Bitmap scaling (fast; bilinear, so pixels differ slightly from PIL's bicubic). */
class BitmapResizer : Resizer {
    override fun resize(image: RgbImage, width: Int, height: Int): RgbImage {
        val src = toBitmap(image)
        val scaled = Bitmap.createScaledBitmap(src, width, height, true)
        val out = fromBitmap(scaled)
        if (scaled !== src) scaled.recycle()
        src.recycle()
        return out
    }

    companion object {
        fun toBitmap(image: RgbImage): Bitmap {
            val argb = IntArray(image.pixels.size) { image.pixels[it] or -0x1000000 }
            return Bitmap.createBitmap(argb, image.width, image.height, Bitmap.Config.ARGB_8888)
        }

        fun fromBitmap(bitmap: Bitmap): RgbImage {
            val w = bitmap.width
            val h = bitmap.height
            val px = IntArray(w * h)
            bitmap.getPixels(px, 0, w, 0, 0, w, h)
            for (i in px.indices) px[i] = px[i] and 0xFFFFFF
            return RgbImage(w, h, px)
        }
    }
}

object Photos {
    /**
     * Decodes a photo, subsampled by a power of two while its longer side stays at least
     * 2 x [targetSize] (so the exact bicubic resize that follows works on a small image).
     */
    fun load(context: Context, uri: Uri, targetSize: Int): RgbImage {
        val bounds = BitmapFactory.Options()
        bounds.inJustDecodeBounds = true
        context.contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, bounds) }
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) throw IllegalArgumentException("$uri is not an image Android can decode")
        var sample = 1
        while (Math.max(bounds.outWidth, bounds.outHeight) / (sample * 2) >= 2 * targetSize) sample *= 2
        val options = BitmapFactory.Options()
        options.inSampleSize = sample
        options.inPreferredConfig = Bitmap.Config.ARGB_8888
        val bitmap = context.contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, options) }
            ?: throw IllegalArgumentException("$uri could not be decoded")
        val image = BitmapResizer.fromBitmap(bitmap)
        bitmap.recycle()
        return image
    }

    fun thumbnail(context: Context, uri: Uri, size: Int): Bitmap {
        val image = load(context, uri, size)
        val scale = size.toFloat() / Math.max(image.width, image.height)
        return Bitmap.createScaledBitmap(BitmapResizer.toBitmap(image), Math.max(1, (image.width * scale).toInt()),
            Math.max(1, (image.height * scale).toInt()), true)
    }
}

object DeviceInfo {
    /** `<brand> <model> (Android <version>)`, as bench.schema.json describes `device`. */
    fun describe(): String = "${Build.BRAND} ${Build.MODEL} (Android ${Build.VERSION.RELEASE})"

    /** This process's resident-set high-water mark (VmHWM) in MiB. */
    fun peakRssMb(): Double {
        val line = File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmHWM:") }
            ?: throw IllegalStateException("/proc/self/status has no VmHWM line")
        val kb = line.substringAfter(':').trim().split(' ')[0].toDouble()
        return kb / 1024.0
    }

    /**
     * The memory a personalization session may take, in MiB: what the system reports available now, less
     * its low-memory threshold (below which it starts killing apps), plus what this process already holds.
     */
    fun availableMiB(context: android.content.Context): Double {
        val am = context.getSystemService(android.content.Context.ACTIVITY_SERVICE) as android.app.ActivityManager
        val info = android.app.ActivityManager.MemoryInfo()
        am.getMemoryInfo(info)
        val line = File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmRSS:") }
        val ownMiB = line?.substringAfter(':')?.trim()?.split(' ')?.get(0)?.toDouble()?.div(1024.0) ?: 0.0
        return (info.availMem - info.threshold) / (1024.0 * 1024.0) + ownMiB
    }
}

/**
 * A file's identity from `stat(2)` (the JVM's "unix" attribute view does not exist on Android):
 * size, mtime and ctime in ns, inode and device, the fields the native runner records.
 */
object StatFileIdentity : FileIdentity {
    override fun of(file: File): Map<String, Long>? {
        val st = try {
            Os.stat(file.path)
        } catch (e: ErrnoException) {
            return null
        }
        return linkedMapOf("bytes" to st.st_size, "mtime_ns" to nanoseconds(st.st_mtim), "ctime_ns" to nanoseconds(st.st_ctim),
            "inode" to st.st_ino, "device" to st.st_dev)
    }

    private fun nanoseconds(t: StructTimespec): Long = t.tv_sec * 1_000_000_000L + t.tv_nsec
}

/** Bundles live under the app's external files dir (adb push there, or import a folder through the picker). */
object BundleStore {
    /**
     * Opens a bundle, verified before anything is loaded from it (size and SHA-256 of every file;
     * files unchanged since the last verification are not hashed again, their stamps live in the
     * app's cache dir, outside the bundle). [mode] FULL hashes every file regardless.
     */
    fun open(context: Context, dir: File, mode: Verification = Verification.CACHED): Bundle =
        Bundle(dir, BundleVerifier(File(context.cacheDir, "verified"), mode, StatFileIdentity))


    fun root(context: Context): File {
        val dir = File(context.getExternalFilesDir(null) ?: context.filesDir, "bundles")
        dir.mkdirs()
        return dir
    }

    fun list(context: Context): List<File> =
        (root(context).listFiles() ?: emptyArray()).filter { File(it, "manifest.json").isFile }.sortedBy { it.name }

    /** Copies a folder picked with ACTION_OPEN_DOCUMENT_TREE into [root] (the runtimes need file paths). */
    fun importTree(context: Context, tree: Uri): File {
        val rootId = DocumentsContract.getTreeDocumentId(tree)
        val name = rootId.substringAfterLast('/').substringAfterLast(':').ifEmpty { "bundle" }
        val target = File(root(context), name)
        val tmp = File(root(context), ".$name.importing")
        tmp.deleteRecursively()
        copyChildren(context, tree, rootId, tmp)
        if (!File(tmp, "manifest.json").isFile) {
            tmp.deleteRecursively()
            throw IllegalArgumentException("the folder has no manifest.json: pick a bundle written by mobilepeft export")
        }
        target.deleteRecursively()
        if (!tmp.renameTo(target)) throw java.io.IOException("cannot move the bundle to ${target.path}")
        return target
    }

    private fun copyChildren(context: Context, tree: Uri, parentId: String, dir: File) {
        dir.mkdirs()
        val children = DocumentsContract.buildChildDocumentsUriUsingTree(tree, parentId)
        val columns = arrayOf(DocumentsContract.Document.COLUMN_DOCUMENT_ID, DocumentsContract.Document.COLUMN_DISPLAY_NAME,
            DocumentsContract.Document.COLUMN_MIME_TYPE)
        context.contentResolver.query(children, columns, null, null, null)?.use { cursor ->
            while (cursor.moveToNext()) {
                val id = cursor.getString(0)
                val displayName = cursor.getString(1)
                val mime = cursor.getString(2)
                if (mime == DocumentsContract.Document.MIME_TYPE_DIR) {
                    copyChildren(context, tree, id, File(dir, displayName))
                } else {
                    val uri = DocumentsContract.buildDocumentUriUsingTree(tree, id)
                    context.contentResolver.openInputStream(uri).use { input ->
                        File(dir, displayName).outputStream().use { output -> input!!.copyTo(output, 1 shl 20) }
                    }
                }
            }
        }
    }
}

/** The loss history as a line chart (axes labelled with the first, minimum and last loss). */
class LossCurveView @JvmOverloads constructor(context: Context, attrs: AttributeSet? = null) : View(context, attrs) {
    private var losses: List<Float> = emptyList()
    private val line = Paint(Paint.ANTI_ALIAS_FLAG).apply {
        color = Color.rgb(25, 118, 210)
        strokeWidth = 4f
        style = Paint.Style.STROKE
    }
    private val axis = Paint(Paint.ANTI_ALIAS_FLAG).apply {
        color = Color.GRAY
        strokeWidth = 2f
    }
    private val label = Paint(Paint.ANTI_ALIAS_FLAG).apply {
        color = Color.DKGRAY
        textSize = 28f
    }

    fun setLosses(values: List<Float>) {
        losses = ArrayList(values)
        invalidate()
    }

    override fun onDraw(canvas: Canvas) {
        super.onDraw(canvas)
        val left = 90f
        val bottom = height - 40f
        val top = 20f
        val right = width - 20f
        canvas.drawLine(left, top, left, bottom, axis)
        canvas.drawLine(left, bottom, right, bottom, axis)
        if (losses.isEmpty()) {
            canvas.drawText("loss per step appears here", left + 20f, (top + bottom) / 2, label)
            return
        }
        val max = losses.maxOrNull()!!
        val min = losses.minOrNull()!!
        val span = if (max > min) max - min else 1f
        val dx = if (losses.size > 1) (right - left) / (losses.size - 1) else 0f
        var prevX = left
        var prevY = bottom - (losses[0] - min) / span * (bottom - top)
        for (i in 1 until losses.size) {
            val x = left + i * dx
            val y = bottom - (losses[i] - min) / span * (bottom - top)
            canvas.drawLine(prevX, prevY, x, y, line)
            prevX = x
            prevY = y
        }
        canvas.drawText(String.format(java.util.Locale.US, "%.3f", max), 4f, top + 24f, label)
        canvas.drawText(String.format(java.util.Locale.US, "%.3f", min), 4f, bottom, label)
        canvas.drawText("step ${losses.size}", right - 140f, height - 6f, label)
    }
}
