package dev.mobilepeft.core

/** The manifest's `onnx_training.vision_encoder` section: the frozen encoder graph whose image tokens feed the training graph. */
class VisionEncoderSpec(val file: String, val input: TensorSpec, val output: TensorSpec)

/** One member of the manifest's `onnx_training.trainable[]`: a trained graph parameter and its PEFT adapter key. */
class TrainableParam(val name: String, val shape: LongArray, val adapterKey: String)

/**
 * The manifest's `onnx_training.split` (a bundle exported with `--train-layers K`): the frozen decoder layers
 * below the top K are an inference graph ([file], its weights int8 or float32, external data in [dataFile] when
 * over 2 GB) that maps the sample inputs to [output] once per sample; the training graph takes [graphInputs]
 * (those hidden states and the attention mask) instead of the sample inputs (docs/on-device-training.md).
 */
class SplitSpec(
    val file: String,
    val dataFile: String?,
    val inputs: List<String>,
    val output: TensorSpec,
    val graphInputs: List<TensorSpec>,
    val frozenLayers: Int,
    val trainLayers: Int,
    val numHiddenLayers: Int,
    val hiddenSize: Int
)

/**
 * The manifest's `onnx_training.memory_estimate_mib`: what a personalization session will hold at its peak,
 * estimated by the exporter from the file sizes (docs/on-device-training.md, "Memory"). The frozen graphs run
 * first and are closed before the training session opens, so the peak is the larger phase.
 */
class MemoryEstimate(val frozenGraphsMiB: Double, val trainingMiB: Double, val trainingPerBatchRowMiB: Double) {
    fun trainingMiB(batchSize: Int): Double = trainingMiB + batchSize * trainingPerBatchRowMiB

    /** Refuse, before anything loads, a session that would not fit [availableMiB] (what the app may use). */
    fun check(batchSize: Int, availableMiB: Double) {
        val training = trainingMiB(batchSize)
        val (phase, need) = if (training >= frozenGraphsMiB) "training" to training else "frozen graphs" to frozenGraphsMiB
        if (need > availableMiB) {
            val hint = if (phase == "training") "lower the batch size, or export with a smaller --train-layers"
            else "export the frozen layers with --prefix-weights int8"
            throw BundleError("personalizing this bundle needs about ${Math.round(need)} MiB ($phase, batch $batchSize); " +
                "this phone can give it ${Math.round(availableMiB)} MiB: $hint")
        }
    }
}

/** The manifest's `onnx_training` section: the ONNX Runtime training artifacts and how to feed them. */
class OnnxTrainingSection(
    val runtime: String,
    val trainingModel: String,
    val evalModel: String,
    val optimizerModel: String,
    val checkpoint: String,
    val nominalCheckpoint: String,
    val ortFormat: Map<String, String>,
    val visionEncoder: VisionEncoderSpec,
    val adapterDir: String,
    val inputs: List<TensorSpec>,
    val label: TensorSpec,
    val ignoreIndex: Int,
    val lossOutput: String,
    val inferenceOutputs: List<String>,
    val imageInput: String,
    val trainable: List<TrainableParam>,
    val optimizerType: String,
    val defaultLearningRate: Double,
    val maxGradNorm: Double,
    val trainProjector: Boolean,
    val split: SplitSpec?,
    val memoryEstimate: MemoryEstimate
) {
    fun input(name: String): TensorSpec = inputs.firstOrNull { it.name == name }
        ?: throw BundleError("${Manifest.FILE}: onnx_training.inputs has no '$name' (has ${inputs.map { it.name }})")

    /** Sequence length of the training graph: `input_ids` shape[1]. */
    val seqLen: Int
        get() {
            val dims = input("input_ids").shape
            val n = if (dims.size == 2) dims[1].size else null
            return n?.toInt() ?: throw BundleError("${Manifest.FILE}: onnx_training.inputs input_ids must be [batch, seq_len], is $dims")
        }
}
