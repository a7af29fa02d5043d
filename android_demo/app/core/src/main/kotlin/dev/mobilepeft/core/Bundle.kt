package dev.mobilepeft.core

import java.io.File

/**
 * A bundle directory: its manifest, read, and its files verified by [verifier] before anything is
 * loaded from them (size and SHA-256; the default keeps its stamps where the native runner does).
 */
class Bundle(val dir: File, verifier: BundleVerifier = BundleVerifier()) {
    val spec: BundleSpec = BundleSpec(Manifest.read(File(dir, Manifest.FILE)))

    /** What the verification hashed and what its stamp vouched for. */
    val verification: VerifyReport = verifier.verify(dir, spec)

    fun file(relativePath: String): File = File(dir, relativePath)
}
