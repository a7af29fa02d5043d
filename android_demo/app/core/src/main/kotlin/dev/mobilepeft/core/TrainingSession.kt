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
