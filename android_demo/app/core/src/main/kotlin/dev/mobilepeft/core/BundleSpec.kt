package dev.mobilepeft.core

/** Everything the apps need from a manifest, read only through [Manifest]'s path calls. */
class BundleSpec(val manifest: Manifest) {
    val format: String = manifest.string("format")
    val manifestVersion: Int = manifest.int("manifest_version")
    val createdBy: String = manifest.string("created_by")

    init {
        if (format != "mobilepeft-bundle") throw BundleError("${manifest.source}: format is '$format', expected 'mobilepeft-bundle'")
        if (manifestVersion != 1) {
            throw BundleError("${manifest.source}: manifest_version $manifestVersion is not supported by this app (it reads version 1); re-export the bundle or update the app")
        }
    }

    val model = ModelDims(
        manifest.string("model.family"),
        manifest.string("model.projector_type"),
        manifest.int("model.hidden_size"),
        manifest.int("model.num_hidden_layers"),
        manifest.int("model.vocab_size"),
        manifest.int("model.num_image_tokens"),
        manifest.int("model.mm_hidden_size"),
        manifest.string("model.base_model")
    )

    val tokenizer = TokenizerInfo(
        manifest.string("tokenizer.file"),
        manifest.int("tokenizer.bos_id"),
        manifest.int("tokenizer.eos_id"),
        manifest.int("tokenizer.pad_id")
    )

    val prompt = PromptTemplate(
        manifest.string("prompt.template"),
        manifest.string("prompt.system"),
        manifest.string("prompt.first_turn"),
        manifest.string("prompt.next_turn"),
        manifest.string("prompt.stop"),
        manifest.string("prompt.image_placeholder"),
        manifest.int("prompt.image_token_id")
    )

    val image = ImagePreprocessingSpec(
        manifest.int("image_preprocessing.size"),
        manifest.string("image_preprocessing.aspect"),
        manifest.ints("image_preprocessing.pad_color").toIntArray(),
        manifest.string("image_preprocessing.resize"),
        manifest.string("image_preprocessing.crop"),
        manifest.double("image_preprocessing.rescale"),
        manifest.doubles("image_preprocessing.mean").toDoubleArray(),
        manifest.doubles("image_preprocessing.std").toDoubleArray(),
        manifest.string("image_preprocessing.layout")
    )

    val maxSeqLen: Int = manifest.int("max_seq_len")

    val files: List<FileEntry> = manifest.keys("files{}").map { key ->
        FileEntry(key, manifest.long("files{}.bytes", key), manifest.string("files{}.sha256", key))
    }

    val executorch: ExecuTorchSection? = if (!manifest.has("executorch")) null else ExecuTorchSection(
        manifest.string("executorch.file"),
        manifest.string("executorch.backend"),
        manifest.string("executorch.quantization"),
        manifest.string("executorch.dtype"),
        readMethods(),
        if (manifest.has("executorch.adapter")) readAdapter() else null
    )

    val onnxTraining: OnnxTrainingSection? = if (!manifest.has("onnx_training")) null else readOnnxTraining()

    val hasCoreml: Boolean = manifest.has("coreml")

    init {
        expect("prompt.template", prompt.template, "v1")
        expect("image_preprocessing.aspect", image.aspect, "pad")
        expect("image_preprocessing.resize", image.resize, "shortest_side_bicubic")
        expect("image_preprocessing.crop", image.crop, "center")
        expect("image_preprocessing.layout", image.layout, "NCHW")
        if (image.padColor.size != 3 || image.mean.size != 3 || image.std.size != 3) {
            throw BundleError("${manifest.source}: image_preprocessing pad_color, mean and std need 3 values each")
        }
        if (prompt.firstTurn.indexOf("{question}") < 0) {
            throw BundleError("${manifest.source}: prompt.first_turn has no {question} placeholder")
        }
    }

    private fun expect(path: String, actual: String, wanted: String) {
        if (actual != wanted) throw BundleError("${manifest.source}: $path is '$actual'; this app supports '$wanted'")
    }

    /** A method's inputs or outputs, stated as flat (name, dtype, shape) triples. */
    private fun triples(method: String, side: String, n: Int, text: (Int) -> String,
                        shape: (Int) -> List<String>): List<TensorSpec> {
        if (n % 3 != 0) throw BundleError("${manifest.source}: executorch.methods.$method.$side must hold name, dtype, shape triples")
        return (0 until n / 3).map { k -> TensorSpec(text(3 * k), text(3 * k + 1), shape(3 * k + 2).map { Dim.parse(it) }) }
    }

    private fun readMethods(): Map<String, MethodSpec> {
        val methods = LinkedHashMap<String, MethodSpec>()
        for (name in manifest.keys("executorch.methods{}")) {
            val inputs = triples(name, "input", manifest.count("executorch.methods{}.input[]", name),
                { k -> manifest.string("executorch.methods{}.input[]", name, k) },
                { k -> manifest.strings("executorch.methods{}.input[]", name, k) })
            val outputs = triples(name, "output", manifest.count("executorch.methods{}.output[]", name),
                { k -> manifest.string("executorch.methods{}.output[]", name, k) },
                { k -> manifest.strings("executorch.methods{}.output[]", name, k) })
            methods[name] = MethodSpec(name, inputs, outputs)
        }
        for (required in listOf("vision_encoder", "token_embedding", "text_decoder")) {
            if (!methods.containsKey(required)) throw BundleError("${manifest.source}: executorch.methods lacks '$required'")
        }
        return methods
    }

    private fun readAdapter(): AdapterSection {
        val tensors = (0 until manifest.count("executorch.adapter.tensors[]")).map { i ->
            AdapterTensorSpec(
                manifest.string("executorch.adapter.tensors[].key", i),
                manifest.string("executorch.adapter.tensors[].adapter_key", i),
                manifest.string("executorch.adapter.tensors[].dtype", i),
                manifest.longs("executorch.adapter.tensors[].shape", i).toLongArray(),
                manifest.bool("executorch.adapter.tensors[].transposed", i),
                manifest.double("executorch.adapter.tensors[].scaling", i),
                manifest.long("executorch.adapter.tensors[].offset", i),
                manifest.long("executorch.adapter.tensors[].bytes", i)
            )
        }
        val format = manifest.string("executorch.adapter.format")
        if (format != "executorch_flat_tensor") {
            throw BundleError("${manifest.source}: executorch.adapter.format is '$format'; this app writes 'executorch_flat_tensor'")
        }
        return AdapterSection(
            manifest.string("executorch.adapter.file"),
            format,
            manifest.long("executorch.adapter.bytes"),
            manifest.long("executorch.adapter.head_bytes"),
            manifest.string("executorch.adapter.head_sha256"),
            tensors
        )
    }

    private fun readOnnxTraining(): OnnxTrainingSection {
        val inputs = (0 until manifest.count("onnx_training.inputs[]")).map { i ->
            TensorSpec(
                manifest.string("onnx_training.inputs[].name", i),
                manifest.string("onnx_training.inputs[].dtype", i),
                manifest.strings("onnx_training.inputs[].shape", i).map { Dim.parse(it) }
            )
        }
        val trainable = (0 until manifest.count("onnx_training.trainable[]")).map { i ->
            TrainableParam(
                manifest.string("onnx_training.trainable[].name", i),
                manifest.longs("onnx_training.trainable[].shape", i).toLongArray(),
                manifest.string("onnx_training.trainable[].adapter_key", i)
            )
        }
        val ortFormat = LinkedHashMap<String, String>()
        if (manifest.has("onnx_training.ort_format")) {
            for (key in manifest.keys("onnx_training.ort_format{}")) ortFormat[key] = manifest.string("onnx_training.ort_format{}", key)
        }
        return OnnxTrainingSection(
            manifest.string("onnx_training.runtime"),
            manifest.string("onnx_training.training_model"),
            manifest.string("onnx_training.eval_model"),
            manifest.string("onnx_training.optimizer_model"),
            manifest.string("onnx_training.checkpoint"),
            manifest.string("onnx_training.nominal_checkpoint"),
            ortFormat,
            VisionEncoderSpec(
                manifest.string("onnx_training.vision_encoder.file"),
                TensorSpec(
                    manifest.string("onnx_training.vision_encoder.input.name"),
                    manifest.string("onnx_training.vision_encoder.input.dtype"),
                    manifest.strings("onnx_training.vision_encoder.input.shape").map { Dim.parse(it) }
                ),
                TensorSpec(
                    manifest.string("onnx_training.vision_encoder.output.name"),
                    manifest.string("onnx_training.vision_encoder.output.dtype"),
                    manifest.strings("onnx_training.vision_encoder.output.shape").map { Dim.parse(it) }
                )
            ),
            manifest.string("onnx_training.adapter_dir"),
            inputs,
            TensorSpec(
                manifest.string("onnx_training.label.name"),
                manifest.string("onnx_training.label.dtype"),
                manifest.strings("onnx_training.label.shape").map { Dim.parse(it) }
            ),
            if (manifest.has("onnx_training.ignore_index")) manifest.int("onnx_training.ignore_index") else -100,
            manifest.string("onnx_training.loss_output"),
            manifest.strings("onnx_training.inference_outputs"),
            manifest.string("onnx_training.image_input"),
            trainable,
            manifest.string("onnx_training.optimizer.type"),
            manifest.double("onnx_training.optimizer.default_learning_rate"),
            manifest.double("onnx_training.optimizer.max_grad_norm"),
            manifest.bool("onnx_training.train_projector"),
            if (manifest.has("onnx_training.split")) readSplit() else null,
            MemoryEstimate(
                manifest.double("onnx_training.memory_estimate_mib.frozen_graphs"),
                manifest.double("onnx_training.memory_estimate_mib.training"),
                manifest.double("onnx_training.memory_estimate_mib.training_per_batch_row")
            )
        )
    }

    private fun readSplit(): SplitSpec = SplitSpec(
        manifest.string("onnx_training.split.file"),
        if (manifest.has("onnx_training.split.data_file")) manifest.string("onnx_training.split.data_file") else null,
        (0 until manifest.count("onnx_training.split.inputs[]")).map { manifest.string("onnx_training.split.inputs[].name", it) },
        TensorSpec(
            manifest.string("onnx_training.split.output.name"),
            manifest.string("onnx_training.split.output.dtype"),
            manifest.strings("onnx_training.split.output.shape").map { Dim.parse(it) }
        ),
        (0 until manifest.count("onnx_training.split.graph_inputs[]")).map { i ->
            TensorSpec(
                manifest.string("onnx_training.split.graph_inputs[].name", i),
                manifest.string("onnx_training.split.graph_inputs[].dtype", i),
                manifest.strings("onnx_training.split.graph_inputs[].shape", i).map { Dim.parse(it) }
            )
        },
        manifest.int("onnx_training.split.frozen_layers"),
        manifest.int("onnx_training.split.train_layers"),
        manifest.int("onnx_training.split.num_hidden_layers"),
        manifest.int("onnx_training.split.hidden_size")
    )

    fun requireExecutorch(): ExecuTorchSection = executorch
        ?: throw BundleError("${manifest.source}: this bundle has no executorch section (export it with `mobilepeft export executorch`)")

    fun requireOnnxTraining(): OnnxTrainingSection = onnxTraining
        ?: throw BundleError("${manifest.source}: this bundle has no onnx_training section (export it with `mobilepeft export onnx-training`)")

    /** Files the sections point at (each must also be listed in files{}). */
    fun referencedFiles(): List<String> {
        val out = ArrayList<String>()
        out.add(tokenizer.file)
        executorch?.let { out.add(it.file) }
        onnxTraining?.let {
            out.addAll(listOf(it.trainingModel, it.evalModel, it.optimizerModel, it.checkpoint, it.visionEncoder.file))
            it.split?.let { s -> out.addAll(listOfNotNull(s.file, s.dataFile)) }
        }
        return out
    }
}
