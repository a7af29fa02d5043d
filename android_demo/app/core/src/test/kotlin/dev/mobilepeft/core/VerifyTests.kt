package dev.mobilepeft.core

import java.io.File
import java.io.RandomAccessFile

/** Flips [size] bytes in the middle of [file] in place: same length, other content. */
fun overwriteMiddle(file: File, size: Int = 4096) {
    RandomAccessFile(file, "rw").use { raf ->
        val at = raf.length() / 2
        val bytes = ByteArray(size)
        raf.seek(at)
        raf.readFully(bytes)
        for (i in bytes.indices) bytes[i] = (bytes[i].toInt() xor 0xFF).toByte()
        raf.seek(at)
        raf.write(bytes)
    }
}

/** A fresh copy of a fixture bundle under the output directory. */
fun copyBundle(fx: Fixtures, name: String, copyName: String): File {
    val copy = File(fx.out, copyName)
    copy.deleteRecursively()
    fx.file(name).copyRecursively(copy)
    return copy
}

fun verifyTests(): List<TestCase> = listOf(
    TestCase("verify: SHA-256 equals Python's hashlib across the padding edges") { fx ->
        for (case in fx.json("sha256_cases.json").arr()) {
            val file = fx.file(case.o("file").str())
            assertEq(case.o("sha256").str(), BundleFiles.sha256(file), "${file.name} (${file.length()} bytes)")
        }
        assertEq("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            BundleFiles.sha256("abc".toByteArray(Charsets.UTF_8)), "FIPS 180-4 example \"abc\"")
    },
    TestCase("verify: real bundles hash as Python recorded them") { fx ->
        for (name in listOf("et_bundle", "ort_bundle")) {
            val dir = fx.file(name)
            val spec = BundleSpec(Manifest.read(File(dir, Manifest.FILE)))
            val report = BundleVerifier(null, Verification.FULL).verify(dir, spec)
            assertEq(spec.files.map { it.path }, report.hashed, "$name: every listed file hashed")
            check(report.unchanged.isEmpty() && report.stamp == null) { "$name: no stamp without a stamp directory" }
        }
    },
    TestCase("verify: a file overwritten in place (same size) is refused, naming it") { fx ->
        val copy = copyBundle(fx, "et_bundle", "tampered_bundle")
        val pte = File(copy, "model.pte")
        val size = pte.length()
        overwriteMiddle(pte)
        assertEq(size, pte.length(), "same size")
        // Verification.SIZE (documented as unsafe) passes it: that is all a size check can see.
        val expected = Bundle(copy, BundleVerifier(null, Verification.SIZE)).spec.files.first { it.path == "model.pte" }.sha256
        for (mode in listOf(Verification.FULL, Verification.CACHED)) {
            val e = assertThrows<BundleError>("$mode") { Bundle(copy, BundleVerifier(File(fx.out, "tamper-stamps"), mode)) }
            val message = e.message!!
            check(message.contains("model.pte: SHA-256 is ${BundleFiles.sha256(pte)}, manifest.json records $expected for model.pte")) { message }
            check(message.contains("copy the bundle again, or re-export it")) { message }
        }
    },
    TestCase("verify: the stamp skips unchanged files, and a later write is caught") { fx ->
        val copy = copyBundle(fx, "et_bundle", "stamped_bundle")
        val stamps = File(fx.out, "stamps")
        stamps.deleteRecursively()
        val cached = BundleVerifier(stamps, Verification.CACHED)
        val spec = Bundle(copy, BundleVerifier(null, Verification.SIZE)).spec
        val all = spec.files.map { it.path }
        // Just written: their timestamps could repeat on a second write within the same tick, so not recorded.
        assertEq(all, cached.verify(copy, spec).hashed, "fresh files hashed")
        assertEq(all, cached.verify(copy, spec).hashed, "fresh files hashed again")
        Thread.sleep(2100)
        val first = cached.verify(copy, spec)
        assertEq(all, first.hashed, "first verification after settling")
        val stamp = first.stamp ?: fail("no stamp written")
        assertEq(stamps.canonicalPath, stamp.parentFile.canonicalPath, "stamp outside the bundle")
        assertEq(BundleFiles.sha256(copy.canonicalPath.toByteArray(Charsets.UTF_8)) + ".json", stamp.name, "stamp name")
        val recorded = Json.parse(stamp.readText()).o("files")
        for (entry in spec.files) {
            assertEq(entry.sha256, recorded.o(entry.path).o("sha256").str(), "${entry.path} sha256 in the stamp")
            assertEq(JvmFileIdentity.of(File(copy, entry.path))!!["inode"], recorded.o(entry.path).o("inode").lng(), "${entry.path} inode")
        }
        val second = cached.verify(copy, spec)
        check(second.hashed.isEmpty()) { "second verification hashed ${second.hashed}" }
        assertEq(all, second.unchanged, "unchanged files")
        assertEq(all, BundleVerifier(stamps, Verification.FULL).verify(copy, spec).hashed, "FULL hashes despite the stamp")
        overwriteMiddle(File(copy, "model.pte"))
        val message = assertThrows<BundleError>("write after the stamp") { cached.verify(copy, spec) }.message!!
        check(message.contains("model.pte: SHA-256 is")) { message }
    },
    TestCase("verify: a stamp directory that cannot be written means hashing every time, not an error") { fx ->
        val blocked = File(fx.out, "not-a-directory")
        blocked.writeText("a file where the stamp directory should be")
        val dir = fx.file("ort_bundle")
        val spec = BundleSpec(Manifest.read(File(dir, Manifest.FILE)))
        val verifier = BundleVerifier(File(blocked, "verified"), Verification.CACHED)
        for (round in 1..2) {
            val report = verifier.verify(dir, spec)
            assertEq(spec.files.size, report.hashed.size, "round $round hashed everything")
            check(report.stamp == null) { "no stamp" }
        }
    }
)
