package dev.mobilepeft.core

/** The manifest's `onnx_training.vision_encoder` section: the frozen encoder graph whose image tokens feed the training graph. */
class VisionEncoderSpec(val file: String, val input: TensorSpec, val output: TensorSpec)

/** One member of the manifest's `onnx_training.trainable[]`: a trained graph parameter and its PEFT adapter key. */
class TrainableParam(val name: String, val shape: LongArray, val adapterKey: String)

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
    val trainProjector: Boolean
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
