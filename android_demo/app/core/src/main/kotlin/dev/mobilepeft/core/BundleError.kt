package dev.mobilepeft.core

/** A bundle that cannot be used as it is; the message names the file (and the field) at fault. */
class BundleError(message: String) : RuntimeException(message)
