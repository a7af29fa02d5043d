package dev.mobilepeft.core

/** Epoch-wise shuffled index batches, [steps] of them (mobilepeft/export/ort/personalize.py `_batches`). */
fun personalizeBatches(n: Int, batchSize: Int, steps: Int, seed: Long): List<List<Int>> {
    require(n >= 1 && batchSize >= 1 && steps >= 1) { "need samples, a batch size and steps" }
    val rng = PyRandom(seed)
    val order = ArrayList<Int>()
    while (order.size < steps * batchSize) {
        val epoch = (0 until n).toMutableList()
        rng.shuffle(epoch)
        order.addAll(epoch)
    }
    return (0 until steps).map { order.subList(it * batchSize, (it + 1) * batchSize).toList() }
}
