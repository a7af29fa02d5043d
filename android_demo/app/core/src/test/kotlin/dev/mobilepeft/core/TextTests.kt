package dev.mobilepeft.core

fun tokenizerTests(): List<TestCase> = listOf(
    TestCase("tokenizer: ids equal Python sentencepiece for every model variant") { fx ->
        val cases = fx.json("tokenizer_cases.json")
        var n = 0
        for ((model, list) in (cases.o("encode") as JsonObject).fields) {
            val tok = SentencePieceTokenizer.load(fx.file("tokenizer/$model"))
            for (c in list.arr()) {
                val text = c.o("text").str()
                assertEq(c.o("ids").ints(), tok.encode(text).toList(), "$model encode ${Json.quote(text)}")
                assertEq(c.o("decoded").str(), tok.decode(tok.encode(text)), "$model decode(encode(${Json.quote(text)}))")
                n++
            }
        }
        check(n >= 60) { "only $n cases" }
    },
    TestCase("tokenizer: decode of arbitrary ids equals Python DecodeIds") { fx ->
        val tok = SentencePieceTokenizer.load(fx.file("tokenizer/tokenizer.model"))
        val cases = fx.json("tokenizer_cases.json").o("decode").arr()
        check(cases.size >= 10) { "decode cases" }
        for (c in cases) {
            val ids = c.o("ids").ints().toIntArray()
            assertEq(c.o("text").str(), tok.decode(ids), "decode ${ids.toList()}")
        }
    },
    TestCase("tokenizer: specials and byte fallback") { fx ->
        val tok = SentencePieceTokenizer.load(fx.file("tokenizer/tokenizer.model"))
        assertEq(1, tok.bosId, "bos")
        assertEq(2, tok.eosId, "eos")
        assertEq(0, tok.unkId, "unk")
        check(tok.byteFallback) { "byte_fallback" }
        val pieces = tok.encode("\u00e9").map { tok.piece(it) }
        check(pieces.containsAll(listOf("<0xC3>", "<0xA9>"))) { "é as UTF-8 byte pieces: $pieces" }
        assertEq("\u00e9 \uD83D\uDE00", tok.decode(tok.encode("\u00e9 \uD83D\uDE00")), "byte pieces decode back")
        assertEq(0, tok.encode("").size, "empty")
    },
    TestCase("tokenizer: unsupported normalizer / model type raise naming the file") { fx ->
        val e = assertThrows<TokenizerError>("nfkc") { SentencePieceTokenizer.load(fx.file("tokenizer/tokenizer_nfkc.model")) }
        check(e.message!!.contains("tokenizer_nfkc.model") && e.message!!.contains("nmt_nfkc")) { "message: ${e.message}" }
        val u = assertThrows<TokenizerError>("unigram") { SentencePieceTokenizer.load(fx.file("tokenizer/tokenizer_unigram.model")) }
        check(u.message!!.contains("tokenizer_unigram.model") && u.message!!.contains("not BPE")) { "message: ${u.message}" }
        val g = assertThrows<TokenizerError>("garbage") { SentencePieceTokenizer.parse(byteArrayOf(10, 99, 1), "junk.model") }
        check(g.message!!.startsWith("junk.model: not a SentencePiece model")) { "message: ${g.message}" }
    }
)

private fun turnsOf(v: JsonValue): List<Turn> = v.arr().map { t -> Turn(t.arr()[0].str(), t.arr()[1].str()) }

fun conversationTests(): List<TestCase> = listOf(
    TestCase("conversation: encode_sample rows equal Python's") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val tok = SentencePieceTokenizer.load(fx.file("ort_bundle/tokenizer.model"))
        val enc = ConversationEncoder.forBundle(spec, tok)
        val cases = fx.json("conversation_cases.json")
        var rows = 0
        for (c in cases.o("rows").arr()) {
            val turns = turnsOf(c.o("turns"))
            val seq = c.o("seq_len").lng().toInt()
            if (c.has("error")) {
                val e = assertThrows<ConversationError>("too long") { enc.encodeSample(turns, seq, spec.tokenizer.padId, "sample 3") }
                check(e.message!!.contains("sample 3") && e.message!!.contains("leaving no room for the answer")) { "message: ${e.message}" }
                continue
            }
            val row = enc.encodeSample(turns, seq, spec.tokenizer.padId)
            assertEq(c.o("input_ids").longs(), row.inputIds.toList(), "input_ids of ${c.o("turns").let { Json.write(it) }}")
            assertEq(c.o("attention_mask").longs(), row.attentionMask.toList(), "attention_mask")
            assertEq(c.o("labels").longs(), row.labels.toList(), "labels")
            rows++
        }
        check(rows >= 5) { "rows $rows" }
        for (c in cases.o("prompts").arr()) {
            assertEq(c.o("ids").ints(), enc.promptIds(c.o("question").str()), "promptIds ${Json.quote(c.o("question").str())}")
        }
        assertThrows<ConversationError>("two placeholders") { enc.promptIds("<image> a <image>") }
        assertEq("<image>\nWhat is it?", enc.questionWithImage("  What is it?\n"), "questionWithImage")
        assertEq("<image>\nWhat is it?", enc.questionWithImage("What is it? <image>"), "placeholder moved")
    }
)

fun imageTests(): List<TestCase> = listOf(
    TestCase("image: pad + normalise equal preprocess_images (no resize needed)") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val cases = fx.json("image_cases.json").o("preprocess").arr()
        check(cases.size >= 3) { "cases" }
        for (c in cases) {
            val img = readRgb(fx.file(c.o("rgb").str()), c.o("width").lng().toInt(), c.o("height").lng().toInt())
            val expected = readFloats(fx.file(c.o("expected").str()))
            val got = ImagePreprocessor(spec.image, PilBicubicResizer()).preprocess(img)
            assertEq(expected.size, got.size, "size")
            var worst = 0.0
            for (i in got.indices) worst = Math.max(worst, Math.abs(got[i] - expected[i]).toDouble())
            check(worst <= 1e-5) { "${c.o("rgb").str()}: max |diff| $worst" }
        }
    },
    TestCase("image: PIL bicubic resize reproduced") { fx ->
        val cases = fx.json("image_cases.json").o("resize").arr()
        for (c in cases) {
            val img = readRgb(fx.file(c.o("rgb").str()), c.o("width").lng().toInt(), c.o("height").lng().toInt())
            val w = c.o("out_width").lng().toInt()
            val h = c.o("out_height").lng().toInt()
            val expected = readRgb(fx.file(c.o("expected").str()), w, h)
            val got = PilBicubicResizer().resize(img, w, h)
            var worst = 0
            for (i in got.pixels.indices) {
                for (shift in intArrayOf(0, 8, 16)) {
                    worst = Math.max(worst, Math.abs(((got.pixels[i] shr shift) and 0xFF) - ((expected.pixels[i] shr shift) and 0xFF)))
                }
            }
            check(worst <= c.o("tolerance").lng()) { "${c.o("rgb").str()} -> ${w}x$h: max level diff $worst" }
        }
    },
    TestCase("image: pad centres the photo on pad_color") { fx ->
        val spec = Bundle(fx.file("ort_bundle")).spec
        val p = ImagePreprocessor(spec.image, PilBicubicResizer())
        val img = RgbImage.filled(4, 2, RgbImage.rgb(1, 2, 3))
        val sq = p.padToSquare(img)
        assertEq(4, sq.width, "side")
        assertEq(RgbImage.rgb(122, 116, 104), sq.at(0, 0), "pad colour on top row")
        assertEq(RgbImage.rgb(1, 2, 3), sq.at(0, 1), "image starts at row (4-2)/2")
        assertEq(RgbImage.rgb(122, 116, 104), sq.at(3, 3), "pad colour on bottom row")
    }
)
