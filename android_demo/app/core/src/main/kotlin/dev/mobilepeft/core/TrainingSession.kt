package dev.mobilepeft.core

/** The ONNX Runtime training session over the bundle's artifacts (OrtTrainingSession on the phone). */
interface TrainingSession {
    /** Forward + backward on [inputs]; returns the loss. */
    fun trainStep(inputs: Map<String, TensorData>): Float
    fun optimizerStep()
    fun lazyResetGrad()
    fun setLearningRate(lr: Float)
    fun saveCheckpoint(path: String)
    fun exportModelForInference(path: String, outputs: List<String>)
    fun close()
}

/** Opens a training session from a checkpoint file (the bundle's, or one saved by an earlier session). */
interface TrainingBackend {
    fun open(checkpointPath: String): TrainingSession
}

/** The bundle's vision encoder (onnx_training.vision_encoder): pixels [1,3,S,S] -> image tokens [1,N,H]. */
interface ImageEncoder {
    fun encode(pixels: FloatArray, shape: LongArray): FloatArray
}

/**
 * A `--train-layers` bundle's frozen decoder layers (onnx_training.split.file): one sample's inputs (the
 * names in split.inputs) -> the hidden states the training graph takes, [1, seq_len, hidden]. Each sample
 * goes through it once, before the training session opens.
 */
interface DecoderPrefix {
    fun hiddenStates(inputs: Map<String, TensorData>): FloatArray
}
