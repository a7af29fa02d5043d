package dev.mobilepeft.core

/** A named graph input: dtype (float32, int64, int32), shape and the data of that dtype. */
class TensorData private constructor(
    val dtype: String,
    val shape: LongArray,
    val floats: FloatArray?,
    val longs: LongArray?,
    val ints: IntArray?
) {
    val elementCount: Long get() = shape.fold(1L) { a, b -> a * b }

    companion object {
        fun ofFloats(shape: LongArray, data: FloatArray): TensorData = checked(TensorData("float32", shape, data, null, null), data.size)
        fun ofLongs(shape: LongArray, data: LongArray): TensorData = checked(TensorData("int64", shape, null, data, null), data.size)
        fun ofInts(shape: LongArray, data: IntArray): TensorData = checked(TensorData("int32", shape, null, null, data), data.size)

        /** Integer data in the manifest's integer dtype. */
        fun ofIntegers(dtype: String, shape: LongArray, data: LongArray): TensorData = when (dtype) {
            "int64" -> ofLongs(shape, data)
            "int32" -> ofInts(shape, IntArray(data.size) { data[it].toInt() })
            else -> throw BundleError("${Manifest.FILE}: integer input has dtype $dtype; this app feeds int64 or int32")
        }

        private fun checked(t: TensorData, n: Int): TensorData {
            if (t.elementCount != n.toLong()) throw IllegalArgumentException("shape ${t.shape.toList()} needs ${t.elementCount} values, got $n")
            return t
        }
    }
}
