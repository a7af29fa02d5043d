package dev.mobilepeft.core

import java.io.File
import java.io.FileInputStream
import java.security.MessageDigest

/** What a bundle directory holds: the size of a file by its path relative to the bundle, null if absent. */
interface FileLister {
    fun sizeOf(relativePath: String): Long?
}

/** [FileLister] over a bundle directory on disk. */
class DirectoryFiles(val dir: File) : FileLister {
    override fun sizeOf(relativePath: String): Long? {
        val f = File(dir, relativePath)
        return if (f.isFile) f.length() else null
    }
}

/** A bundle's files against its manifest: presence, sizes and SHA-256 digests. */
object BundleFiles {
    /** Every file of files{} present with its byte size, and every file a section names listed there. */
    fun problems(spec: BundleSpec, files: FileLister): List<String> {
        val out = ArrayList<String>()
        val listed = HashSet<String>()
        for (entry in spec.files) {
            listed.add(entry.path)
            val size = files.sizeOf(entry.path)
            when {
                size == null -> out.add("${entry.path} is listed in ${Manifest.FILE} but missing from the bundle")
                size != entry.bytes -> out.add("${entry.path} has $size bytes, ${Manifest.FILE} says ${entry.bytes} (copied incompletely?)")
            }
        }
        for (path in spec.referencedFiles()) {
            if (!listed.contains(path)) out.add("$path is used by ${Manifest.FILE} but not listed in its files")
        }
        return out
    }

    fun check(spec: BundleSpec, files: FileLister) {
        val p = problems(spec, files)
        if (p.isNotEmpty()) throw BundleError("${spec.manifest.source}: " + p.joinToString("; "))
    }

    /** Lowercase hex SHA-256 of a file's content (as manifest.json records it), read in 1 MiB blocks. */
    fun sha256(file: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        FileInputStream(file).use { input ->
            val buf = ByteArray(1 shl 20)
            while (true) {
                val n = input.read(buf)
                if (n < 0) break
                digest.update(buf, 0, n)
            }
        }
        return hex(digest.digest())
    }

    fun sha256(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

    private fun hex(digest: ByteArray): String {
        val sb = StringBuilder()
        for (b in digest) {
            val v = b.toInt() and 0xFF
            sb.append(Character.forDigit(v shr 4, 16)).append(Character.forDigit(v and 15, 16))
        }
        return sb.toString()
    }
}
