package dev.mobilepeft.core

import java.io.File

/**
 * A `--train-layers` bundle (the top 2 of the tiny model's 4 layers train) against the Python side: the fixture
 * holds each sample's real vision-encoder and frozen-layer outputs (ONNX Runtime, in Python), the batch Python's
 * BatchBuilder builds from them, and an ORT-trained state's inference model; tests/test_android_core.py compares
 * the adapter files written here with Python's.
 */

/** The frozen graphs as tables of their real outputs: each call is matched to the sample whose inputs it must be. */
private class RecordedGraphs(fx: Fixtures) {
    val cases = fx.json("split/cases.json")
    val samples = cases.o("samples").arr()
    val images = samples.indices.map { readFloats(fx.file("split/image$it.f32")) }
    val hidden = samples.indices.map { readFloats(fx.file("split/hidden$it.f32")) }
    var encoderCalls = 0
    var prefixCalls = 0

    /** Pixels carry the sample's index in their first value. */
    val encoder = object : ImageEncoder {
        override fun encode(pixels: FloatArray, shape: LongArray): FloatArray {
            encoderCalls++
            return images[pixels[0].toInt()]
        }
    }

    val prefix = object : DecoderPrefix {
        override fun hiddenStates(inputs: Map<String, TensorData>): FloatArray {
            prefixCalls++
            val ids = inputs.getValue("input_ids").longs!!.toList()
            val i = samples.indexOfFirst { it.o("input_ids").longs() == ids }
            check(i >= 0) { "the prefix got input_ids that no sample has: ${ids.take(24)}" }
            val image = inputs.getValue("image_embeds").floats!!
            check(image.contentEquals(images[i])) { "sample $i's image tokens reached the prefix changed" }
            assertEq(listOf(1L, ids.size.toLong()), inputs.getValue("attention_mask").shape.toList(), "one sample per call")
            return hidden[i]
        }
    }

    fun samples(spec: BundleSpec): List<Sample> = samples.mapIndexed { i, s ->
        val pixels = FloatArray(3 * spec.image.size * spec.image.size)
        pixels[0] = i.toFloat()
        Sample(pixels, s.o("question").str(), s.o("answer").str(), "photo ${i + 1}")
    }
}

/** The same softmax regression, of each label on a feature of its hidden state (the sign pattern of 5 values):
 *  a real model that learns from what the split graph receives. */
private class HiddenSoftmaxSession(vocab: Int, private val hiddenSize: Int, model: File) :
    SoftmaxSession(vocab, 32, FloatArray(vocab * 32), model) {
    val inputNames = ArrayList<List<String>>()

    override fun trainStep(inputs: Map<String, TensorData>): Float {
        inputNames.add(inputs.keys.toList())
        return super.trainStep(inputs)
    }

    override fun featureAt(inputs: Map<String, TensorData>, t: Int): Int {
        val h = inputs.getValue("hidden_states").floats!!
        var f = 0
        for (k in 0 until 5) if (h[t * hiddenSize + k] > 0f) f = f or (1 shl k)
        return f
    }
}

fun splitTests(): List<TestCase> = listOf(
    TestCase("split: the manifest's onnx_training.split and memory estimate are read") { fx ->
        val section = Bundle(fx.file("ort_split_bundle")).spec.requireOnnxTraining()
        val split = section.split ?: fail("the fixture bundle trains only the top layers")
        assertEq(listOf(2, 2, 4, 128), listOf(split.frozenLayers, split.trainLayers, split.numHiddenLayers, split.hiddenSize), "layers")
        assertEq(listOf("hidden_states", "attention_mask"), split.graphInputs.map { it.name }, "graph inputs")
        assertEq(listOf("input_ids", "attention_mask", "image_embeds"), split.inputs, "prefix inputs")
        check(split.trainLayers + split.frozenLayers == split.numHiddenLayers) { "layers add up" }
        check(Bundle(fx.file("ort_bundle")).spec.requireOnnxTraining().split == null) { "a whole-decoder bundle has no split" }
        val python = fx.json("split/cases.json").o("estimate_batch_4")
        assertClose(python.o("training").num(), section.memoryEstimate.trainingMiB(4), 1e-9, "training phase, batch 4")
        assertClose(python.o("frozen_graphs").num(), section.memoryEstimate.frozenGraphsMiB, 1e-9, "frozen graphs")
    },
    TestCase("split: the training batch equals Python's, the frozen layers ran once per sample") { fx ->
        val spec = Bundle(fx.file("ort_split_bundle")).spec
        val tok = SentencePieceTokenizer.load(fx.file("ort_split_bundle/tokenizer.model"))
        val graphs = RecordedGraphs(fx)
        val p = Personalizer(spec, tok, graphs.encoder)
        val samples = graphs.samples(spec)
        val prepared = p.prepare(samples, p.encodeImages(samples), graphs.prefix)
        assertEq(3, graphs.prefixCalls, "one prefix run per sample")
        val inputs = p.batches.buildSplit(prepared.rows, prepared.features.map { it!! })
        assertEq(listOf("hidden_states", "attention_mask", "labels"), inputs.keys.toList(), "graph inputs + label")
        val seq = spec.requireOnnxTraining().seqLen.toLong()
        assertEq(listOf(3L, seq, 128L), inputs.getValue("hidden_states").shape.toList(), "hidden states shape")
        check(inputs.getValue("hidden_states").floats!!.contentEquals(readFloats(fx.file("split/batch_hidden_states.f32")))) {
            "hidden states differ from Python's batch"
        }
        val cases = graphs.cases
        assertEq(cases.o("batch_attention_mask").longs(), inputs.getValue("attention_mask").longs!!.toList(), "attention mask")
        assertEq(cases.o("batch_labels").longs(), inputs.getValue("labels").longs!!.toList(), "labels")
    },
    TestCase("split: a bundle that trains the top layers refuses to prepare without its frozen layers") { fx ->
        val spec = Bundle(fx.file("ort_split_bundle")).spec
        val graphs = RecordedGraphs(fx)
        val p = Personalizer(spec, SentencePieceTokenizer.load(fx.file("ort_split_bundle/tokenizer.model")), graphs.encoder)
        val samples = graphs.samples(spec)
        val e = assertThrows<BundleError>("no prefix") { p.prepare(samples, p.encodeImages(samples), null) }
        check(e.message!!.contains("top 2 of 4") && e.message!!.contains("decoder_prefix.onnx")) { "message: ${e.message}" }
    },
    TestCase("split: training on the frozen layers' output lowers the loss; the prefix is not run again") { fx ->
        val spec = Bundle(fx.file("ort_split_bundle")).spec
        val graphs = RecordedGraphs(fx)
        val p = Personalizer(spec, SentencePieceTokenizer.load(fx.file("ort_split_bundle/tokenizer.model")), graphs.encoder, TickClock())
        val samples = graphs.samples(spec)
        val prepared = p.prepare(samples, p.encodeImages(samples), graphs.prefix)
        val session = HiddenSoftmaxSession(spec.model.vocabSize, 128, fx.file("split/trained_inference_model.onnx"))
        val result = p.train(session, prepared, PersonalizeConfig(steps = 30, batchSize = 2, learningRate = 2.0, checkpointEvery = 0),
            "start", File(fx.out, "split-work"))
        assertEq(3, graphs.prefixCalls, "prefix runs: only while preparing")
        assertEq(3, graphs.encoderCalls, "each photo encoded once")
        check(session.inputNames.all { it == listOf("hidden_states", "attention_mask", "labels") }) { "names: ${session.inputNames[0]}" }
        val first = result.losses.subList(0, 5).average()
        val last = result.losses.subList(25, 30).average()
        check(last < 0.5 * first) { "loss should fall: first ${result.losses.subList(0, 5)}, last ${result.losses.subList(25, 30)}" }
    },
    TestCase("split: answers run the frozen layers, then the top layers' model on their output") { fx ->
        val split = Bundle(fx.file("ort_split_bundle")).spec.requireOnnxTraining().split ?: fail("no split")
        val graphs = RecordedGraphs(fx)
        val ids = graphs.samples[1].o("input_ids").longs().toLongArray()
        val sample = mapOf(
            "input_ids" to TensorData.ofLongs(longArrayOf(1, ids.size.toLong()), ids),
            "attention_mask" to TensorData.ofLongs(longArrayOf(1, ids.size.toLong()), LongArray(ids.size) { 1L }),
            "image_embeds" to TensorData.ofFloats(longArrayOf(1, 16, 128), graphs.images[1]))
        var seen: Map<String, TensorData>? = null
        val top = object : LogitsModel {
            override fun logits(inputs: Map<String, TensorData>): FloatArray { seen = inputs; return FloatArray(3) }
            override fun close() {}
        }
        SplitLogitsModel(split, graphs.prefix, top).logits(sample)
        val got = seen ?: fail("the top model was not called")
        assertEq(listOf("hidden_states", "attention_mask"), got.keys.toList(), "top inputs")
        check(got.getValue("hidden_states").floats!!.contentEquals(graphs.hidden[1])) { "the prefix's output reaches the top" }
        assertEq(listOf(1L, ids.size.toLong(), 128L), got.getValue("hidden_states").shape.toList(), "hidden shape")
    },
    TestCase("split: the ORT-trained top layers read from one file and from external data are the same") { fx ->
        val ort = Bundle(fx.file("ort_split_bundle")).spec.requireOnnxTraining()
        val single = OnnxInitializers.trained(ort, fx.file("split/trained_inference_model.onnx"))
        val external = OnnxInitializers.trained(ort, fx.file("split/external/trained_inference_model.onnx"))
        check(fx.file("split/external/trained_inference_model.onnx").length() < 0.5 * fx.file("split/trained_inference_model.onnx").length()) {
            "the external variant keeps its tensors outside the model"
        }
        assertEq(single.keys.toList(), external.keys.toList(), "keys")
        for ((k, t) in single) check(t.data.contentEquals(external.getValue(k).data) && t.shape.contentEquals(external.getValue(k).shape)) { k }
        check(single.keys.all { AdapterFile.decoderLayer(it) >= 2 }) { "only the top layers train: ${single.keys.first()}" }
    },
    TestCase("split: the adapter file and the PEFT adapter keep the layers below and carry the trained ones") { fx ->
        val section = Bundle(fx.file("et_adapter_bundle")).spec.requireExecutorch().adapter ?: fail("no adapter section")
        val ort = Bundle(fx.file("ort_split_bundle")).spec.requireOnnxTraining()
        check(AdapterFile.fits(section, ort)) { "a split bundle of the same adapter fits" }
        for ((variant, model) in listOf("single" to "split/trained_inference_model.onnx", "external" to "split/external/trained_inference_model.onnx")) {
            val trained = OnnxInitializers.trained(ort, fx.file(model))
            AdapterFile.write(section, fx.file("et_adapter_bundle/adapter.ptd"), trained, ort.split!!.frozenLayers,
                File(fx.out, "split_adapter_$variant.ptd"))
            val dir = File(fx.out, "split_adapter_dir_$variant")
            dir.deleteRecursively()
            AdapterExport.write(ort, fx.file("ort_split_bundle/adapter"), fx.file(model), dir)
        }
        // Without the split's frozen layers the tensors below have no trained value: refused by name.
        val trained = OnnxInitializers.trained(ort, fx.file("split/trained_inference_model.onnx"))
        val e = assertThrows<BundleError>("no frozen layers") {
            AdapterFile.bytes(section, fx.file("et_adapter_bundle/adapter.ptd").readBytes(), "adapter.ptd", trained, 0)
        }
        check(e.message!!.contains(".layers.0.") || e.message!!.contains(".layers.1.")) { "names a lower tensor: ${e.message}" }
    },
    TestCase("split: a session that would not fit the phone's memory is refused before anything loads") { fx ->
        val estimate = Bundle(fx.file("ort_split_bundle")).spec.requireOnnxTraining().memoryEstimate
        val need = Math.max(estimate.trainingMiB(8), estimate.frozenGraphsMiB)
        estimate.check(8, need + 1.0)
        val e = assertThrows<BundleError>("too little memory") { estimate.check(8, need - 1.0) }
        check(e.message!!.contains("batch 8") && e.message!!.contains("MiB")) { "message: ${e.message}" }
        check(estimate.trainingMiB(1) < estimate.trainingMiB(8)) { "the logits grow with the batch" }
    }
)
