package dev.mobilepeft.core

import java.io.File

fun jsonTests(): List<TestCase> = listOf(
    TestCase("json parses every value kind and escapes") { _ ->
        val v = Json.parse(""" { "a": [1, -2.5e3, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "e": {} } """)
        val a = v.o("a").arr()
        assertEq(1L, a[0].lng(), "int")
        assertClose(-2500.0, a[1].num(), 0.0, "exp number")
        assertEq(true, (a[2] as JsonBool).value, "true")
        assertEq(false, (a[3] as JsonBool).value, "false")
        check(a[4] === JsonNull) { "null" }
        assertEq("q\"\\/\b\u000C\n\r\t\u00e9\uD83D\uDE00", v.o("s").str(), "escapes + surrogate pair")
        assertEq(0, (v.o("e") as JsonObject).fields.size, "empty object")
    },
    TestCase("json errors say the offset") { _ ->
        val cases = mapOf(
            "{\"a\": 1,}" to 8, "[01]" to 1, "{\"a\" 1}" to 5, "\"abc" to 4, "[1] x" to 4, "{\"a\":1,\"a\":2}" to 7,
            "\"\\ud800\"" to 1, "\"\\x\"" to 1, "[1,]" to 3, "nul" to 0, "\"a\u0001\"" to 2
        )
        for ((text, offset) in cases) {
            val e = assertThrows<JsonError>(text) { Json.parse(text) }
            check(e.message!!.contains("offset $offset:")) { "'$text': message '${e.message}' should name offset $offset" }
        }
    },
    TestCase("json writer round-trips with stable key order and escaping") { _ ->
        val text = "{\"z\":1,\"a\":[\"x\\ny\",\"\\u0001\",2.5],\"m\":{\"k\":null,\"t\":true}}"
        val v = Json.parse(text)
        assertEq(text, Json.write(v), "compact round trip")
        assertEq(text, Json.write(Json.parse(Json.write(v, 2))), "pretty round trip")
        assertEq("\"\\\"\\\\\\u001f\u00e9\"", Json.quote("\"\\\u001F\u00e9"), "quote")
        assertEq("3.0", Json.number(3.0).text, "integral double")
        assertThrows<JsonError>("NaN") { Json.number(Double.NaN) }
    }
)

fun manifestTests(): List<TestCase> = listOf(
    TestCase("manifest: real ORT bundle sections") { fx ->
        val bundle = Bundle(fx.file("ort_bundle"))
        val spec = bundle.spec
        val expect = fx.json("ort_expect.json")
        assertEq(expect.o("hidden_size").lng().toInt(), spec.model.hiddenSize, "hidden_size")
        assertEq(expect.o("num_image_tokens").lng().toInt(), spec.model.numImageTokens, "num_image_tokens")
        assertEq(expect.o("vocab_size").lng().toInt(), spec.model.vocabSize, "vocab_size")
        assertEq("tokenizer.model", spec.tokenizer.file, "tokenizer file")
        assertEq(listOf(1, 2, 0), listOf(spec.tokenizer.bosId, spec.tokenizer.eosId, spec.tokenizer.padId), "bos/eos/pad")
        assertEq("</s>", spec.prompt.stop, "stop")
        assertEq(-200, spec.prompt.imageTokenId, "image token id")
        assertEq(listOf(122, 116, 104), spec.image.padColor.toList(), "pad color")
        val ort = spec.requireOnnxTraining()
        assertEq(expect.o("seq_len").lng().toInt(), ort.seqLen, "seq_len from input_ids shape")
        assertEq(listOf("input_ids", "attention_mask", "image_embeds"), ort.inputs.map { it.name }, "inputs")
        assertEq("batch", ort.inputs[0].shape[0].symbol, "symbolic batch dim")
        assertEq(expect.o("seq_len").lng() * 3, ort.label.resolve(3)[0], "label batch*seq")
        assertEq("labels", ort.label.name, "label name")
        assertEq(-100, ort.ignoreIndex, "ignore index")
        assertEq(expect.o("loss_output").str(), ort.lossOutput, "loss output")
        assertEq(listOf("logits"), ort.inferenceOutputs, "inference outputs")
        assertEq("image_embeds", ort.imageInput, "image input")
        assertEq(expect.o("trainable").arr().size, ort.trainable.size, "trainable count")
        assertEq(expect.o("trainable").arr()[0].o("name").str(), ort.trainable[0].name, "first trainable name")
        assertEq(expect.o("trainable").arr()[0].o("shape").longs(), ort.trainable[0].shape.toList(), "first trainable shape")
        assertClose(expect.o("lr").num(), ort.defaultLearningRate, 0.0, "default lr")
        assertEq(listOf(1L, 3L, 64L, 64L), ort.visionEncoder.input.resolve(1).toList(), "vision input shape")
        assertEq("image_tokens", ort.visionEncoder.output.name, "vision output")
        assertEq("adapter", ort.adapterDir, "adapter dir")
        check(spec.executorch == null && !spec.hasCoreml) { "no executorch/coreml section" }
        assertEq(0, BundleFiles.problems(spec, DirectoryFiles(bundle.dir)).size, "files present with their sizes")
        assertEq(spec.files.map { it.path }.sorted(), (bundle.verification.hashed + bundle.verification.unchanged).sorted(), "every file verified")
    },
    TestCase("manifest: real ExecuTorch bundle methods") { fx ->
        val spec = Bundle(fx.file("et_bundle")).spec
        val et = spec.requireExecutorch()
        assertEq("model.pte", et.file, "pte")
        assertEq("portable", et.backend, "backend")
        assertEq("none", et.quantization, "quantization")
        assertEq(listOf("vision_encoder", "token_embedding", "text_decoder"), et.methods.keys.toList().subList(0, 3), "methods")
        val dec = et.method("text_decoder")
        assertEq(listOf("embeddings", "cache_position"), dec.inputs.map { it.name }, "decoder inputs")
        assertEq("T", dec.inputs[1].shape[0].symbol, "symbolic T")
        assertEq(listOf(1L, 5L, spec.model.vocabSize.toLong()), dec.outputs[0].resolve(1, mapOf("T" to 5L)).toList(), "logits shape")
        assertEq("int64", et.method("token_embedding").inputs[0].dtype, "token dtype")
        check(spec.onnxTraining == null) { "no onnx_training section" }
    },
    TestCase("manifest: missing and mistyped fields name manifest.json and the path") { fx ->
        val text = fx.file("ort_bundle/manifest.json").readText()
        val noLabel = text.replace("\"label\":", "\"label_renamed\":")
        val e1 = assertThrows<BundleError>("missing label") { BundleSpec(Manifest.parse(noLabel)) }
        check(e1.message!!.contains("manifest.json") && e1.message.contains("onnx_training.label")) { "message: ${e1.message}" }
        val badSize = text.replaceFirst("\"size\": 64", "\"size\": \"64\"")
        val e2 = assertThrows<BundleError>("string size") { BundleSpec(Manifest.parse(badSize)) }
        check(e2.message!!.contains("image_preprocessing.size: expected an integer, found a string")) { "message: ${e2.message}" }
        val v2 = text.replaceFirst("\"manifest_version\": 1", "\"manifest_version\": 2")
        val e3 = assertThrows<BundleError>("version") { BundleSpec(Manifest.parse(v2)) }
        check(e3.message!!.contains("manifest_version 2")) { "message: ${e3.message}" }
        val e4 = assertThrows<BundleError>("not json") { Manifest.parse("{\"format\": ") }
        check(e4.message!!.startsWith("manifest.json: invalid JSON at offset 11")) { "message: ${e4.message}" }
        val m = Manifest.parse(text)
        val e5 = assertThrows<BundleError>("index out of range") { m.string("onnx_training.inputs[].name", 7) }
        check(e5.message!!.contains("onnx_training.inputs[7].name") || e5.message!!.contains("onnx_training.inputs[7]")) { "message: ${e5.message}" }
        check(!m.has("coreml") && m.has("onnx_training.label") && !m.has("files{}.bytes", "nope")) { "has()" }
        assertEq(3, m.count("onnx_training.inputs[]"), "count")
        val split = text.replaceFirst("\"onnx_training\": {", "\"onnx_training\": {\"split\": {\"train_layers\": 2, \"num_hidden_layers\": 4}, ")
        val e6 = assertThrows<BundleError>("incomplete split") { BundleSpec(Manifest.parse(split)) }
        check(e6.message!!.contains("manifest.json") && e6.message.contains("onnx_training.split.file")) { "message: ${e6.message}" }
    },
    TestCase("manifest: wrong file sizes and missing files are reported") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val real = DirectoryFiles(fx.file("ort_bundle"))
        val lister = object : FileLister {
            override fun sizeOf(relativePath: String): Long? = when (relativePath) {
                "tokenizer.model" -> null
                "checkpoint" -> 5L
                else -> real.sizeOf(relativePath)
            }
        }
        val problems = BundleFiles.problems(spec, lister)
        assertEq(2, problems.size, "problems $problems")
        check(problems[0].contains("checkpoint has 5 bytes")) { problems[0] }
        check(problems[1].contains("tokenizer.model is listed in manifest.json but missing")) { problems[1] }
        val copy = File(fx.out, "broken_bundle")
        fx.file("ort_bundle").copyRecursively(copy, overwrite = true)
        File(copy, "vision_encoder.onnx").appendBytes(byteArrayOf(1))
        val e = assertThrows<BundleError>("Bundle() size check") { Bundle(copy) }
        check(e.message!!.contains("vision_encoder.onnx has")) { "message: ${e.message}" }
    }
)
