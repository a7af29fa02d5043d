package dev.mobilepeft.core

import java.io.File
import java.nio.file.Files
import java.nio.file.StandardCopyOption

/** Files the app writes appear whole or not at all: a sibling temporary file, then an atomic rename over the old one. */
object AtomicFile {
    fun write(file: File, data: ByteArray) {
        val tmp = File(file.absoluteFile.parentFile, "." + file.name + ".tmp")
        try {
            tmp.writeBytes(data)
            Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE)
        } finally {
            tmp.delete()
        }
    }
}
