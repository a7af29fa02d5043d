package dev.mobilepeft.core

import java.io.File
import java.io.IOException
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.nio.file.attribute.FileTime
import java.util.concurrent.TimeUnit

/** How much of a bundle [BundleVerifier] checks before the bundle is used. */
enum class Verification {
    /** Size and SHA-256 of every listed file, all hashed (then the stamp is written). */
    FULL,

    /** Size and SHA-256, skipping the hash of a file the stamp shows unchanged (the default). */
    CACHED,

    /** Sizes only. Unsafe: a file overwritten in place (same size) passes. */
    SIZE
}

/**
 * What identifies one version of a file without reading it: field name -> value (`bytes`,
 * `mtime_ns`, `ctime_ns`, `inode`, `device`, as far as the platform reports them). Every write to
 * the file must change at least one field. Null when the file cannot be examined.
 */
interface FileIdentity {
    fun of(file: File): Map<String, Long>?
}

/**
 * The JVM's view of a file: the "unix" attribute view (size, mtime and ctime in ns, inode, device)
 * where the file system offers it (Linux, macOS), else size and lastModified (a write that restores
 * the mtime goes unnoticed there). The Android app passes an identity from `Os.stat` instead.
 */
object JvmFileIdentity : FileIdentity {
    override fun of(file: File): Map<String, Long>? {
        if (!file.isFile) return null
        val path = file.toPath()
        if (!path.fileSystem.supportedFileAttributeViews().contains("unix")) {
            return linkedMapOf("bytes" to file.length(), "mtime_ns" to TimeUnit.MILLISECONDS.toNanos(file.lastModified()))
        }
        val attributes = try {
            Files.readAttributes(path, "unix:size,lastModifiedTime,ctime,ino,dev")
        } catch (e: IOException) {
            return null
        }
        return linkedMapOf(
            "bytes" to attributes["size"] as Long,
            "mtime_ns" to (attributes["lastModifiedTime"] as FileTime).to(TimeUnit.NANOSECONDS),
            "ctime_ns" to (attributes["ctime"] as FileTime).to(TimeUnit.NANOSECONDS),
            "inode" to attributes["ino"] as Long,
            "device" to attributes["dev"] as Long
        )
    }
}

/** What a verification did: the files it hashed, those the stamp vouched for, and the stamp now in place. */
class VerifyReport(val hashed: List<String>, val unchanged: List<String>, val stamp: File?)

/**
 * Checks a bundle before anything is loaded from it: every file `manifest.json` lists must have
 * the recorded size and SHA-256 (a size check alone passes a .pte with 4 KB overwritten, which
 * then loads and generates garbage), and every file a section names must be listed.
 *
 * Hashing a 1 GB .pte takes about a second, so after a successful verification a stamp is written
 * to [stampDir] (outside the bundle; the name is the SHA-256 of the bundle's canonical path +
 * ".json"; the native runner and the Python tools write the same stamps), recording per file the
 * manifest's sha256 and the file's [identity]. Next time a file whose identity and manifest sha256
 * are what the stamp records is not hashed again; every other file is. A write changes the mtime
 * and the ctime (which no program can set back), a replacement the inode, so a modified file is
 * always hashed again. Timestamps are coarse (a clock tick; 2 s on FAT), so a file changed less
 * than 2 s before the verification started is hashed but not recorded: a second write within the
 * same tick could leave its timestamps as recorded. A [stampDir] that is null, unreadable or
 * unwritable only means hashing everything each time. The native runner
 * (runner/src/verify.h) and the iOS core follow the same rule.
 */
class BundleVerifier(
    private val stampDir: File? = defaultStampDir(),
    private val mode: Verification = Verification.CACHED,
    private val identity: FileIdentity = JvmFileIdentity
) {
    companion object {
        private val SETTLE_NS = TimeUnit.SECONDS.toNanos(2)

        /** `$XDG_CACHE_HOME/mobilepeft/verified`, else `~/.cache/mobilepeft/verified` (as the native runner); null when neither is known. */
        fun defaultStampDir(): File? {
            val xdg = System.getenv("XDG_CACHE_HOME")
            if (xdg != null && xdg.startsWith("/")) return File(xdg, "mobilepeft/verified")
            val home = System.getProperty("user.home")
            return if (home.isNullOrEmpty()) null else File(home, ".cache/mobilepeft/verified")
        }
    }

    private class StampEntry(val sha256: String, val identity: Map<String, Long>)

    /** Throws [BundleError] naming the first file that is missing, has the wrong size or the wrong SHA-256. */
    fun verify(dir: File, spec: BundleSpec): VerifyReport {
        BundleFiles.check(spec, DirectoryFiles(dir))  // sizes first: a truncated copy is named as such, unhashed
        if (mode == Verification.SIZE) return VerifyReport(emptyList(), emptyList(), null)
        val started = TimeUnit.MILLISECONDS.toNanos(System.currentTimeMillis())
        val bundlePath = dir.canonicalPath
        val stampFile = stampDir?.let { File(it, BundleFiles.sha256(bundlePath.toByteArray(Charsets.UTF_8)) + ".json") }
        val previous = if (mode == Verification.CACHED && stampFile != null) readStamp(stampFile) else emptyMap()
        val verified = LinkedHashMap<String, StampEntry>()
        val hashed = ArrayList<String>()
        val unchanged = ArrayList<String>()
        for (entry in spec.files) {
            val file = File(dir, entry.path)
            // Taken before hashing: a write during the hash leaves the stamp with a stale identity.
            val current = identity.of(file)
                ?: throw BundleError("${file.path}: listed in ${Manifest.FILE} but missing; copy the whole bundle directory")
            val recorded = previous[entry.path]
            if (recorded != null && recorded.sha256 == entry.sha256 && recorded.identity == current) {
                unchanged.add(entry.path)
                verified[entry.path] = recorded
                continue
            }
            val actual = BundleFiles.sha256(file)
            hashed.add(entry.path)
            if (actual != entry.sha256) {
                throw BundleError("${file.path}: SHA-256 is $actual, ${Manifest.FILE} records ${entry.sha256} for ${entry.path}; " +
                    "the file is corrupt or was changed after export: copy the bundle again, or re-export it with `mobilepeft export`")
            }
            if (settled(current, started)) verified[entry.path] = StampEntry(entry.sha256, current)
        }
        val stamp = when {
            stampFile == null -> null
            previous.isNotEmpty() && hashed.isEmpty() && verified.size == previous.size -> stampFile  // still true
            writeStamp(stampFile, bundlePath, verified) -> stampFile
            else -> null
        }
        return VerifyReport(hashed, unchanged, stamp)
    }

    /** Recorded only once its timestamps lie 2 s before the verification started (and it has some). */
    private fun settled(identity: Map<String, Long>, startedNs: Long): Boolean {
        val times = listOfNotNull(identity["mtime_ns"], identity["ctime_ns"])
        return times.isNotEmpty() && times.all { it <= startedNs - SETTLE_NS }
    }

    /** The stamp's entries; empty when it is missing, unreadable or malformed. */
    private fun readStamp(file: File): Map<String, StampEntry> = try {
        val root = Json.parse(file.readText(Charsets.UTF_8)) as JsonObject
        (root["files"] as JsonObject).fields.mapValues { (_, value) -> stampEntry(value as JsonObject) }
    } catch (e: Exception) {  // IOException, JsonError, a missing or mistyped field: as if there were no stamp
        emptyMap()
    }

    private fun stampEntry(record: JsonObject): StampEntry {
        val identity = LinkedHashMap<String, Long>()
        for ((key, value) in record.fields) {
            if (key != "sha256") identity[key] = (value as JsonNumber).toLongOrNull() ?: throw JsonError("$key is not an integer")
        }
        return StampEntry((record["sha256"] as JsonString).value, identity)
    }

    /** Temporary file + atomic rename (a reader sees the old stamp or the new one); false when it cannot be written. */
    private fun writeStamp(file: File, bundlePath: String, entries: Map<String, StampEntry>): Boolean {
        val files = JsonObjectBuilder()
        for ((path, entry) in entries) {
            val record = JsonObjectBuilder()
            for ((key, value) in entry.identity) record.put(key, value)
            files.put(path, record.put("sha256", entry.sha256).build())
        }
        val root = JsonObjectBuilder().put("bundle", bundlePath).put("files", files.build()).build()
        val dir = file.parentFile
        if (!dir.isDirectory && !dir.mkdirs()) return false
        val tmp = try {
            File.createTempFile(".${file.name}", ".tmp", dir)
        } catch (e: IOException) {
            return false
        }
        return try {
            tmp.writeText(Json.write(root) + "\n", Charsets.UTF_8)
            Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
            true
        } catch (e: IOException) {
            tmp.delete()
            false
        }
    }
}
