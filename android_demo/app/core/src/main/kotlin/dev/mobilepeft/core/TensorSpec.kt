package dev.mobilepeft.core

/** One dimension of a tensor shape: a fixed size or a symbol ("batch", "T", "batch*128"). */
class Dim(val size: Long?, val symbol: String?) {
    companion object {
        fun parse(text: String): Dim {
            val n = text.toLongOrNull()
            return if (n != null) Dim(n, null) else Dim(null, text)
        }
    }

    /** The size for a batch of [batch] rows and the symbol values in [vars] ("batch*128" = batch x 128). */
    fun resolve(batch: Long, vars: Map<String, Long> = emptyMap()): Long {
        if (size != null) return size
        var product = 1L
        for (factor in symbol!!.split('*')) {
            val f = factor.trim()
            val n = f.toLongOrNull()
            product *= when {
                n != null -> n
                f == "batch" -> batch
                vars.containsKey(f) -> vars.getValue(f)
                else -> throw BundleError("${Manifest.FILE}: shape dimension '$symbol' has no value here")
            }
        }
        return product
    }

    override fun toString(): String = size?.toString() ?: symbol!!
}

/** A named graph input or output as the manifest states it: dtype and a shape that may hold symbols. */
class TensorSpec(val name: String, val dtype: String, val shape: List<Dim>) {
    fun resolve(batch: Long, vars: Map<String, Long> = emptyMap()): LongArray =
        LongArray(shape.size) { shape[it].resolve(batch, vars) }

    override fun toString(): String = "$name $dtype $shape"
}
