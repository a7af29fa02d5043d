package dev.mobilepeft.core

import java.io.File

/**
 * The adapter-file writer against the Python/ExecuTorch side: the fixture's ExecuTorch bundle keeps its
 * adapter as data, `trained_inference_model.onnx` holds an ORT-trained state of the ORT bundle's adapter,
 * and tests/test_android_core.py compares what is written here with `mobilepeft adapter to-ptd`'s file.
 */
fun adapterFileTests(): List<TestCase> = listOf(
    TestCase("adapter file: the manifest's executorch.adapter section is read") { fx ->
        val section = Bundle(fx.file("et_adapter_bundle")).spec.requireExecutorch().adapter
            ?: fail("the fixture bundle keeps its adapter as data")
        val expect = fx.json("adapter_expect.json")
        assertEq(expect.o("tensors").lng().toInt(), section.tensors.size, "tensors")
        assertEq(expect.o("bytes").lng(), section.bytes, "bytes")
        check(section.tensors.any { it.transposed && it.shape[0] > it.shape[1] }) { "A^T stored [in, r]" }
        check(section.tensors.all { it.scaling > 0 && it.offset >= section.headBytes }) { "scaling and offsets" }
        check(AdapterFile.fits(section, Bundle(fx.file("ort_bundle")).spec.requireOnnxTraining())) { "the ORT bundle's adapter fits" }
    },
    TestCase("adapter file: written from the ORT-trained state, read back by the FlatTensor reader") { fx ->
        val et = Bundle(fx.file("et_adapter_bundle")).spec.requireExecutorch()
        val section = et.adapter ?: fail("no adapter section")
        val ort = Bundle(fx.file("ort_bundle")).spec.requireOnnxTraining()
        val trained = OnnxInitializers.trained(ort, fx.file("trained_inference_model.onnx"))
        val out = File(fx.out, "adapter_from_ort.ptd")
        AdapterFile.write(section, fx.file("et_adapter_bundle/adapter.ptd"), trained, 0, out)
        val written = out.readBytes()
        AdapterFile.check(section, written, out.path)
        val entries = FlatTensorFile.read(written, out.path)
        val buf = java.nio.ByteBuffer.wrap(written).order(java.nio.ByteOrder.LITTLE_ENDIAN)
        for (t in section.tensors) {
            val source = trained.getValue(t.adapterKey)
            val e = entries.getValue(t.key)
            val cols = source.shape[1].toInt()
            // element [i][j] of the stored tensor is source[j][i] when transposed
            val i = (e.shape[0] - 1).toInt()
            val j = (e.shape[1] - 1).toInt()
            val expected = if (t.transposed) source.data[j * cols + i] else source.data[i * cols + j]
            assertEq(expected, buf.getFloat((e.offset + 4 * (i * e.shape[1] + j)).toInt()), "${t.key} last element")
        }
    },
    TestCase("adapter file: files that do not fit the bundle are refused naming the tensor") { fx ->
        val section = Bundle(fx.file("et_adapter_bundle")).spec.requireExecutorch().adapter ?: fail("no adapter section")
        for (case in fx.json("foreign_ptd.json").arr()) {
            val file = fx.file(case.o("file").str())
            val error = assertThrows<BundleError>(file.name) { AdapterFile.check(section, file.readBytes(), file.path) }
            val message = error.message ?: ""
            check(message.contains(case.o("tensor").str()) && message.contains(file.path)) { "${file.name}: $message" }
        }
    },
    TestCase("adapter file: trained tensors of another rank are refused, and the previous file stays") { fx ->
        val section = Bundle(fx.file("et_adapter_bundle")).spec.requireExecutorch().adapter ?: fail("no adapter section")
        val ort = Bundle(fx.file("ort_bundle")).spec.requireOnnxTraining()
        val trained = LinkedHashMap(OnnxInitializers.trained(ort, fx.file("trained_inference_model.onnx")))
        val out = File(fx.out, "kept.ptd")
        AdapterFile.write(section, fx.file("et_adapter_bundle/adapter.ptd"), trained, 0, out)
        val previous = out.readBytes()
        val key = trained.keys.first()
        val t = trained.getValue(key)
        val rank = t.shape[0].toInt() - 1
        trained[key] = OnnxInitializers.Tensor(longArrayOf(rank.toLong(), t.shape[1]), t.data.copyOf(rank * t.shape[1].toInt()))
        val error = assertThrows<BundleError>("rank") { AdapterFile.write(section, fx.file("et_adapter_bundle/adapter.ptd"), trained, 0, out) }
        check((error.message ?: "").contains(key)) { "names the tensor: ${error.message}" }
        check(out.readBytes().contentEquals(previous)) { "the previous file is unchanged" }
    }
)
