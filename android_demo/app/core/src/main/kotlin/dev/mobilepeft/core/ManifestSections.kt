package dev.mobilepeft.core

/** The manifest's `model` section: the dimensions the apps size buffers and check graphs with. */
class ModelDims(
    val family: String,
    val projectorType: String,
    val hiddenSize: Int,
    val numHiddenLayers: Int,
    val vocabSize: Int,
    val numImageTokens: Int,
    val mmHiddenSize: Int,
    val baseModel: String
)

/** The manifest's `tokenizer` section: the SentencePiece file and its special ids. */
class TokenizerInfo(val file: String, val bosId: Int, val eosId: Int, val padId: Int)

/** The manifest's `prompt` section: the chat template the model was trained with. */
class PromptTemplate(
    val template: String,
    val system: String,
    val firstTurn: String,
    val nextTurn: String,
    val stop: String,
    val imagePlaceholder: String,
    val imageTokenId: Int
)

/** The manifest's `image_preprocessing` section: how a photo becomes the vision encoder's pixels. */
class ImagePreprocessingSpec(
    val size: Int,
    val aspect: String,
    val padColor: IntArray,
    val resize: String,
    val crop: String,
    val rescale: Double,
    val mean: DoubleArray,
    val std: DoubleArray,
    val layout: String
)

/** One member of the manifest's `files{}`: what the bundle file must hold (size and SHA-256). */
class FileEntry(val path: String, val bytes: Long, val sha256: String)
