package dev.mobilepeft.core

/**
 * Settings of one [Personalizer.train] run, with the defaults of the desktop's `personalize`
 * (mobilepeft/export/ort/personalize.py); a null [learningRate] takes the bundle's
 * onnx_training.optimizer.default_learning_rate, and [seed] fixes the batch order as it does there.
 */
class PersonalizeConfig(
    val steps: Int = 20,
    val batchSize: Int = 4,
    val learningRate: Double? = null,
    val seed: Long = 0,
    /** Save a known-good checkpoint every this many steps (0: only the start one is kept as fallback). */
    val checkpointEvery: Int = 10
) {
    init {
        require(steps >= 1 && batchSize >= 1) { "steps and batch size must be at least 1" }
        require(learningRate == null || learningRate > 0) { "learning rate must be positive" }
        require(checkpointEvery >= 0) { "checkpointEvery must be >= 0" }
    }

    /** Steps for [epochs] passes over [samples] samples. */
    companion object {
        fun stepsForEpochs(epochs: Int, samples: Int, batchSize: Int): Int = Math.max(1, (epochs * samples + batchSize - 1) / batchSize)
    }
}
