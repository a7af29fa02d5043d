package dev.mobilepeft.core

/** What [Personalizer.train] did: loss and time of each step that ran, and why it stopped early if it did. */
class PersonalizeResult(
    val losses: List<Float>,
    val stepMs: List<Double>,
    val stepsDone: Int,
    val stoppedEarly: Boolean,
    val stopReason: String?,
    /** A checkpoint whose parameters gave a finite loss (the bundle's, a periodic save, or the final one). */
    val lastGoodCheckpoint: String,
    val learningRate: Double,
    val batchSize: Int
) {
    /** This run as a benchmark record (mobilepeft/export/bench.schema.json's training keys). */
    fun benchResult(device: String, threads: Int, peakRssMb: Double): BenchResult = BenchResult(
        threads = threads, backend = "cpu", quantization = "none", device = device, runtime = "onnxruntime-training",
        trainStepMs = Summary.of(stepMs), trainPeakRssMb = peakRssMb, trainSteps = stepsDone, batchSize = batchSize
    )
}
