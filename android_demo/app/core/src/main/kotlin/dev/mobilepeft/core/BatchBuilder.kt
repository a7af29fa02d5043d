package dev.mobilepeft.core

/** Builds the named training inputs from rows and encoded images, from the manifest's names, dtypes and shapes. */
class BatchBuilder(private val section: OnnxTrainingSection) {
    val seqLen: Int = section.seqLen
    private val imageShape: LongArray = section.visionEncoder.output.resolve(1)

    fun imageElements(): Int = (imageShape.fold(1L) { a, b -> a * b }).toInt()

    fun build(rows: List<EncodedRow>, images: List<FloatArray?>): Map<String, TensorData> {
        require(rows.size == images.size) { "${rows.size} rows but ${images.size} images" }
        val b = rows.size.toLong()
        val out = LinkedHashMap<String, TensorData>()
        for (spec in section.inputs) {
            val shape = spec.resolve(b)
            when (spec.name) {
                section.imageInput -> {
                    if (spec.dtype != "float32") throw BundleError("${Manifest.FILE}: ${spec.name} must be float32, is ${spec.dtype}")
                    val per = imageElements()
                    val data = FloatArray(rows.size * per)
                    for ((i, img) in images.withIndex()) {
                        if (img == null) continue // zeros for a row without an image
                        if (img.size != per) throw IllegalArgumentException("image tokens have ${img.size} values, the graph takes $per")
                        System.arraycopy(img, 0, data, i * per, per)
                    }
                    out[spec.name] = TensorData.ofFloats(shape, data)
                }
                "input_ids" -> out[spec.name] = TensorData.ofIntegers(spec.dtype, checkRow(shape, spec), concat(rows) { it.inputIds })
                "attention_mask" -> out[spec.name] = TensorData.ofIntegers(spec.dtype, checkRow(shape, spec), concat(rows) { it.attentionMask })
                else -> throw BundleError("${Manifest.FILE}: onnx_training.inputs has '${spec.name}', which this app cannot fill " +
                    "(it feeds input_ids, attention_mask and ${section.imageInput})")
            }
        }
        out[section.label.name] = labels(rows)
        return out
    }

    private fun labels(rows: List<EncodedRow>): TensorData {
        val label = section.label
        val shape = label.resolve(rows.size.toLong())
        if (shape.size != 1 || shape[0] != rows.size.toLong() * seqLen) {
            throw BundleError("${Manifest.FILE}: onnx_training.label shape ${label.shape} is not [batch*$seqLen]")
        }
        return TensorData.ofIntegers(label.dtype, shape, concat(rows) { it.labels })
    }

    /**
     * A `--train-layers` bundle's training inputs (split.graph_inputs): each row's hidden states from the frozen
     * layers ([DecoderPrefix], computed once per sample), the attention mask, and the labels.
     */
    fun buildSplit(rows: List<EncodedRow>, hidden: List<FloatArray>): Map<String, TensorData> {
        val split = section.split ?: throw BundleError("${Manifest.FILE}: onnx_training has no split; use build()")
        require(rows.size == hidden.size) { "${rows.size} rows but ${hidden.size} hidden states" }
        val b = rows.size.toLong()
        val out = LinkedHashMap<String, TensorData>()
        for (spec in split.graphInputs) {
            val shape = spec.resolve(b)
            when (spec.name) {
                split.output.name -> {
                    if (shape.size != 3 || shape[1] != seqLen.toLong() || shape[2] != split.hiddenSize.toLong()) {
                        throw BundleError("${Manifest.FILE}: ${spec.name} shape ${spec.shape} is not [batch, $seqLen, ${split.hiddenSize}]")
                    }
                    val per = seqLen * split.hiddenSize
                    val data = FloatArray(rows.size * per)
                    for ((i, h) in hidden.withIndex()) {
                        if (h.size != per) throw IllegalArgumentException("hidden states of row $i have ${h.size} values, the graph takes $per")
                        System.arraycopy(h, 0, data, i * per, per)
                    }
                    out[spec.name] = TensorData.ofFloats(shape, data)
                }
                "attention_mask" -> out[spec.name] = TensorData.ofIntegers(spec.dtype, checkRow(shape, spec), concat(rows) { it.attentionMask })
                else -> throw BundleError("${Manifest.FILE}: onnx_training.split.graph_inputs has '${spec.name}', which this app " +
                    "cannot fill (it feeds ${split.output.name} and attention_mask)")
            }
        }
        out[section.label.name] = labels(rows)
        return out
    }

    private fun checkRow(shape: LongArray, spec: TensorSpec): LongArray {
        if (shape.size != 2 || shape[1] != seqLen.toLong()) throw BundleError("${Manifest.FILE}: ${spec.name} shape ${spec.shape} is not [batch, $seqLen]")
        return shape
    }

    private fun concat(rows: List<EncodedRow>, f: (EncodedRow) -> LongArray): LongArray {
        val out = LongArray(rows.size * seqLen)
        for ((i, r) in rows.withIndex()) System.arraycopy(f(r), 0, out, i * seqLen, seqLen)
        return out
    }
}
