package dev.mobilepeft.demo

import ai.onnxruntime.OrtEnvironment
import android.app.Activity
import android.content.Intent
import android.net.Uri
import android.os.Bundle as AndroidBundle
import android.text.InputType
import android.view.ViewGroup
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ProgressBar
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import dev.mobilepeft.core.AdapterFile
import dev.mobilepeft.core.AdapterSection
import dev.mobilepeft.core.BenchSettings
import dev.mobilepeft.core.BenchmarkRunner
import dev.mobilepeft.core.GreedyAnswerer
import dev.mobilepeft.core.ImagePreprocessor
import dev.mobilepeft.core.NativeRunner
import dev.mobilepeft.core.OnnxInitializers
import dev.mobilepeft.core.OnnxTrainingSection
import dev.mobilepeft.core.PersonalizeConfig
import dev.mobilepeft.core.Personalizer
import dev.mobilepeft.core.PilBicubicResizer
import dev.mobilepeft.core.Sample
import dev.mobilepeft.core.SentencePieceTokenizer
import dev.mobilepeft.core.SplitLogitsModel
import dev.mobilepeft.core.Verification
import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale

/**
 * Two screens over the pure-Kotlin core: Benchmark (the bundle's .pte through ExecuTorch, the same
 * JSON keys as `mobilepeft bench`) and Personalize (photos + typed answers -> ORT training steps ->
 * exported adapter -> answers before/after). Every model fact comes from the bundle's manifest.json.
 */
class MainActivity : Activity() {
    private val pickBundle = 1
    private val pickPhotos = 2

    private lateinit var bundleSpinner: Spinner
    private lateinit var content: LinearLayout
    private lateinit var status: TextView
    private var bundles: List<File> = emptyList()
    private var lastJson: String? = null
    @Volatile private var busy = false

    // Personalize screen state
    private val photoRows = ArrayList<PhotoRow>()
    private lateinit var photoList: LinearLayout
    private lateinit var progress: ProgressBar
    private lateinit var curve: LossCurveView
    private lateinit var results: TextView
    private lateinit var fastResize: CheckBox

    private class PhotoRow(val uri: Uri, val question: EditText, val answer: EditText)

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        val root = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(24, 24, 24, 24) }
        val top = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
        bundleSpinner = Spinner(this)
        top.addView(bundleSpinner, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f))
        top.addView(button("Import bundle…") {
            startActivityForResult(Intent(Intent.ACTION_OPEN_DOCUMENT_TREE), pickBundle)
        })
        root.addView(top)
        val tabs = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
        tabs.addView(button("Benchmark") { showBenchmark() })
        tabs.addView(button("Personalize") { showPersonalize() })
        root.addView(tabs)
        status = TextView(this)
        root.addView(status)
        content = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL }
        root.addView(ScrollView(this).apply { addView(content) },
            LinearLayout.LayoutParams(ViewGroup.LayoutParams.MATCH_PARENT, 0, 1f))
        setContentView(root)
        refreshBundles()
        showBenchmark()
    }

    private fun button(text: String, onClick: () -> Unit): Button = Button(this).apply {
        this.text = text
        setOnClickListener { onClick() }
    }

    private fun numberField(hint: String, value: Int): EditText = EditText(this).apply {
        this.hint = hint
        setText(value.toString())
        inputType = InputType.TYPE_CLASS_NUMBER
    }

    private fun refreshBundles() {
        bundles = BundleStore.list(this)
        val names = if (bundles.isEmpty()) listOf("no bundle: adb push one to ${BundleStore.root(this)}") else bundles.map { it.name }
        bundleSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, names)
    }

    private fun selectedBundle(): File {
        if (bundles.isEmpty()) throw IllegalStateException("no bundle: import a bundle folder or adb push one to ${BundleStore.root(this)}")
        return bundles[bundleSpinner.selectedItemPosition]
    }

    private fun runInBackground(what: String, work: () -> Unit) {
        if (busy) return
        busy = true
        status.text = what
        Thread {
            try {
                work()
            } catch (e: Throwable) {
                runOnUiThread { status.text = "Error: ${e.message ?: e.javaClass.simpleName}" }
            } finally {
                busy = false
            }
        }.start()
    }

    private fun share(json: String) {
        val send = Intent(Intent.ACTION_SEND).apply {
            type = "application/json"
            putExtra(Intent.EXTRA_SUBJECT, "mobilepeft benchmark")
            putExtra(Intent.EXTRA_TEXT, json)
        }
        startActivity(Intent.createChooser(send, "Share benchmark JSON"))
    }

    // ---------------------------------------------------------------- Benchmark

    private fun showBenchmark() {
        content.removeAllViews()
        val threads = numberField("threads", 4)
        val promptLen = numberField("prompt tokens", 32)
        val genLen = numberField("generated tokens", 32)
        val runs = numberField("runs", 5)
        val warmup = numberField("warm-up runs", 1)
        for ((label, field) in listOf("Threads" to threads, "Prompt tokens" to promptLen, "Generated tokens" to genLen,
            "Runs" to runs, "Warm-up runs" to warmup)) {
            content.addView(TextView(this).apply { text = label })
            content.addView(field)
        }
        val output = TextView(this).apply { setTextIsSelectable(true) }
        content.addView(button("Run benchmark") {
            val settings = BenchSettings(threads.text.toString().toInt(), promptLen.text.toString().toInt(),
                genLen.text.toString().toInt(), runs.text.toString().toInt(), warmup.text.toString().toInt())
            val dir = selectedBundle()
            runInBackground("Verifying and loading ${dir.name}…") {
                val bundle = BundleStore.open(this, dir)
                val section = bundle.spec.requireExecutorch()
                val engine = ExecuTorchEngine(bundle.file(section.file), section, settings.threads)
                try {
                    val result = BenchmarkRunner(engine).run(bundle.spec, settings, DeviceInfo.describe(), { DeviceInfo.peakRssMb() }) { i, n, warm ->
                        runOnUiThread { status.text = "Run $i/$n" + if (warm) " (warm-up)" else "" }
                    }
                    val json = result.toJson()
                    File(getExternalFilesDir(null) ?: filesDir, "benchmark_results.json").writeText(json)
                    lastJson = json
                    runOnUiThread {
                        status.text = "Done: ${section.backend}/${section.quantization}, ${settings.runs} runs"
                        output.text = json
                    }
                } finally {
                    engine.close()
                }
            }
        })
        content.addView(button("Share JSON") { lastJson?.let { share(it) } ?: run { status.text = "Run the benchmark first" } })
        content.addView(output)
    }

    // ---------------------------------------------------------------- Personalize

    private fun showPersonalize() {
        content.removeAllViews()
        photoRows.clear()
        content.addView(button("Pick photos…") {
            val pick = Intent(Intent.ACTION_OPEN_DOCUMENT).apply {
                addCategory(Intent.CATEGORY_OPENABLE)
                type = "image/*"
                putExtra(Intent.EXTRA_ALLOW_MULTIPLE, true)
            }
            startActivityForResult(pick, pickPhotos)
        })
        photoList = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL }
        content.addView(photoList)
        val steps = numberField("training steps", 20)
        val batch = numberField("batch size", 4)
        val threads = numberField("threads", 4)
        for ((label, field) in listOf("Steps" to steps, "Batch size" to batch, "Threads" to threads)) {
            content.addView(TextView(this).apply { text = label })
            content.addView(field)
        }
        fastResize = CheckBox(this).apply { text = "Fast resize (Android bitmap filter instead of exact bicubic)" }
        content.addView(fastResize)
        progress = ProgressBar(this, null, android.R.attr.progressBarStyleHorizontal)
        content.addView(progress)
        curve = LossCurveView(this)
        content.addView(curve, LinearLayout.LayoutParams(ViewGroup.LayoutParams.MATCH_PARENT, 400))
        results = TextView(this).apply { setTextIsSelectable(true) }
        content.addView(button("Train, export and compare") {
            train(steps.text.toString().toInt(), batch.text.toString().toInt(), threads.text.toString().toInt())
        })
        content.addView(button("Share training JSON") { lastJson?.let { share(it) } ?: run { status.text = "Train first" } })
        content.addView(results)
    }

    private fun addPhoto(uri: Uri) {
        val row = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
        val thumb = ImageView(this)
        try {
            thumb.setImageBitmap(Photos.thumbnail(this, uri, 160))
        } catch (e: Exception) {
            status.text = "Cannot read $uri: ${e.message}"
            return
        }
        row.addView(thumb, LinearLayout.LayoutParams(160, 160))
        val fields = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL }
        val question = EditText(this).apply { hint = "Question about the photo"; setText("What is in the picture?") }
        val answer = EditText(this).apply { hint = "The answer the model should give" }
        fields.addView(question)
        fields.addView(answer)
        row.addView(fields, LinearLayout.LayoutParams(0, ViewGroup.LayoutParams.WRAP_CONTENT, 1f))
        photoList.addView(row)
        photoRows.add(PhotoRow(uri, question, answer))
    }

    private fun train(steps: Int, batchSize: Int, threads: Int) {
        val rows = photoRows.filter { it.answer.text.isNotBlank() && it.question.text.isNotBlank() }
        if (rows.isEmpty()) {
            status.text = "Pick photos and type a question and an answer for each"
            return
        }
        val inputs = rows.map { Triple(it.uri, it.question.text.toString(), it.answer.text.toString()) }
        val dir = selectedBundle()
        val fast = fastResize.isChecked
        progress.max = steps
        progress.progress = 0
        runInBackground("Verifying ${dir.name}, preparing ${inputs.size} photos…") {
            val bundle = BundleStore.open(this, dir)
            val spec = bundle.spec
            val section = spec.requireOnnxTraining()
            val tokenizer = SentencePieceTokenizer.load(bundle.file(spec.tokenizer.file))
            val pre = ImagePreprocessor(spec.image, if (fast) BitmapResizer() else PilBicubicResizer())
            val samples = inputs.mapIndexed { i, (uri, q, a) ->
                Sample(pre.preprocess(Photos.load(this, uri, spec.image.size)), q, a, "photo ${i + 1}")
            }
            // Refused before anything loads when the session would not fit (docs/on-device-training.md, "Memory").
            section.memoryEstimate.check(batchSize, DeviceInfo.availableMiB(this))
            val env = OrtEnvironment.getEnvironment()
            // The frozen graphs run first, one at a time, each closed before the next opens: the vision encoder
            // over every photo, then (a --train-layers bundle) the frozen decoder layers over every sample.
            val encoder = OrtImageEncoder(env, bundle, threads)
            val personalizer = Personalizer(spec, tokenizer, encoder)
            val imageTokens = try { personalizer.encodeImages(samples) } finally { encoder.close() }
            runOnUiThread { status.text = "Running the frozen layers over ${samples.size} photos…" }
            val prefix = section.split?.let { OrtDecoderPrefix(env, bundle, threads) }
            val prepared = try { personalizer.prepare(samples, imageTokens, prefix) } finally { prefix?.close() }
            val backend = OrtTrainingBackend(env, bundle)
            val stamp = SimpleDateFormat("yyyyMMdd-HHmmss", Locale.US).format(Date())
            val outDir = File(getExternalFilesDir(null) ?: filesDir, "personalized/$stamp")
            // The deployed model: an imported ExecuTorch bundle keeping this adapter as data answers through
            // the native runner, which swaps the personalized adapter in after training (docs/on-device-loop.md).
            // It is open only while it answers: never beside the training session.
            val deploy = deployBundles(section)
            if (deploy.isNotEmpty()) NativeRunner.loadLibrary()
            var native = deploy.firstOrNull()?.let { NativeRunner.open(it.first, threads) }
            var session: dev.mobilepeft.core.TrainingSession? = null
            try {
                val pixelFiles = samples.mapIndexed { i, sample -> NativeRunner.pixelFile(sample.pixels, File(cacheDir, "photo$i.f32")) }
                val output = section.inferenceOutputs[0]
                // Answers before: the untouched adapter, exported the same way as the trained one; the session
                // that exports it is closed before answering, so the two never share the phone's memory.
                runOnUiThread { status.text = "Answering with the bundle's adapter…" }
                val beforeAnswers = native?.let { runner ->
                    samples.indices.map { runner.answer(samples[it].question, pixelFiles[it]) }.also { runner.close(); native = null }
                } ?: run {
                    val before = File(cacheDir, "before_inference_model.onnx")
                    backend.open(backend.bundleCheckpoint).let { s ->
                        try { s.exportModelForInference(before.path, section.inferenceOutputs) } finally { s.close() }
                    }
                    answerAll(env, bundle, before, threads, output, tokenizer, imageTokens, samples)
                }
                val opened = backend.open(backend.bundleCheckpoint)
                session = opened
                val losses = ArrayList<Float>()
                val result = personalizer.train(opened, prepared, PersonalizeConfig(steps = steps, batchSize = batchSize),
                    backend.bundleCheckpoint, File(cacheDir, "personalize-work")) { step, total, loss ->
                    losses.add(loss)
                    val snapshot = ArrayList(losses)
                    runOnUiThread {
                        progress.progress = step
                        curve.setLosses(snapshot)
                        status.text = String.format(Locale.US, "Step %d/%d, loss %.4f", step, total, loss)
                    }
                }
                runOnUiThread { status.text = "Exporting the adapter…" }
                val inference = personalizer.export(opened, result, backend, bundle.dir, outDir)
                opened.close()
                session = null
                val deployed = StringBuilder(writeAdapterFiles(section, inference, outDir, deploy))
                native = deploy.firstOrNull()?.let { NativeRunner.open(it.first, threads) }
                val afterAnswers = native?.let { runner ->
                    val swapMs = runner.swap(File(outDir, "adapter-${deploy[0].first.name}.ptd"))
                    deployed.append(String.format(Locale.US, "Answers from %s (ExecuTorch, native runner): adapter swapped in %.1f ms, RSS %.0f MB\n",
                        deploy[0].first.name, swapMs, runner.rssMb))
                    samples.indices.map { runner.answer(samples[it].question, pixelFiles[it]) }
                } ?: answerAll(env, bundle, inference, threads, output, tokenizer, imageTokens, samples)
                val json = result.benchResult(DeviceInfo.describe(), threads, DeviceInfo.peakRssMb()).toJson()
                File(outDir, "train_benchmark.json").writeText(json)
                lastJson = json
                val report = StringBuilder()
                result.stopReason?.let { report.append("Stopped early: ").append(it).append("\n\n") }
                report.append("Saved to ${outDir.path} (checkpoint, inference_model.onnx, adapter/)\n")
                report.append(deployed).append("\n")
                for (i in samples.indices) {
                    report.append("${samples[i].label}: ${samples[i].question}\n")
                    report.append("  wanted: ${samples[i].answer}\n  before: ${beforeAnswers[i]}\n  after:  ${afterAnswers[i]}\n\n")
                }
                report.append(json)
                runOnUiThread {
                    status.text = String.format(Locale.US, "Trained %d steps, loss %.4f -> %.4f", result.stepsDone,
                        result.losses.firstOrNull() ?: Float.NaN, result.losses.lastOrNull() ?: Float.NaN)
                    results.text = report.toString()
                }
            } finally {
                session?.close()
                native?.close()
            }
        }
    }

    /**
     * The personalized adapter for every imported ExecuTorch bundle that keeps this adapter as data
     * (`mobilepeft export executorch --adapter-as-data`): OUT/adapter-<bundle>.ptd, which that bundle's
     * runner swaps in without re-export (docs/on-device-loop.md). Other bundles are left alone.
     */
    private fun writeAdapterFiles(ort: OnnxTrainingSection, inference: File, outDir: File,
                                  deploy: List<Pair<File, AdapterSection>>): String {
        val trained = OnnxInitializers.trained(ort, inference)
        val lines = StringBuilder()
        for ((dir, adapter) in deploy) {
            val out = File(outDir, "adapter-${dir.name}.ptd")
            AdapterFile.write(adapter, File(dir, adapter.file), trained, ort.split?.frozenLayers ?: 0, out)
            lines.append("Wrote ${out.path}: the personalized adapter for ${dir.name}\n")
        }
        return lines.toString()
    }

    /** Imported ExecuTorch bundles that keep as data the adapter this ORT bundle trains, with their adapter section. */
    private fun deployBundles(ort: OnnxTrainingSection): List<Pair<File, AdapterSection>> = bundles.mapNotNull { dir ->
        BundleStore.open(this, dir).spec.executorch?.adapter?.takeIf { AdapterFile.fits(it, ort) }?.let { dir to it }
    }

    /** Greedy answers from an exported inference model; a --train-layers bundle's runs behind its frozen layers. */
    private fun answerAll(
        env: OrtEnvironment, bundle: dev.mobilepeft.core.Bundle, model: File, threads: Int, output: String,
        tokenizer: SentencePieceTokenizer, imageTokens: List<FloatArray>, samples: List<Sample>
    ): List<String> {
        val spec = bundle.spec
        val top = OrtLogitsModel(env, model, threads, output)
        val split = spec.requireOnnxTraining().split
        val prefix = split?.let { OrtDecoderPrefix(env, bundle, threads) }
        val logits = if (split != null && prefix != null) SplitLogitsModel(split, prefix, top) else top
        try {
            val answerer = GreedyAnswerer(spec, logits, tokenizer)
            return samples.indices.map { answerer.answer(imageTokens[it], samples[it].question) }
        } finally {
            logits.close()
            prefix?.close()
        }
    }

    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        super.onActivityResult(requestCode, resultCode, data)
        if (resultCode != RESULT_OK || data == null) return
        when (requestCode) {
            pickBundle -> {
                val tree = data.data ?: return
                runInBackground("Copying the bundle…") {
                    val dir = BundleStore.importTree(this, tree)
                    // A new copy: every file hashed now (and stamped), not at the first run.
                    BundleStore.open(this, dir, Verification.FULL)
                    runOnUiThread {
                        refreshBundles()
                        bundleSpinner.setSelection(bundles.indexOfFirst { it.name == dir.name }.coerceAtLeast(0))
                        status.text = "Imported ${dir.name}"
                    }
                }
            }
            pickPhotos -> {
                val clip = data.clipData
                if (clip != null) {
                    for (i in 0 until clip.itemCount) addPhoto(clip.getItemAt(i).uri)
                } else {
                    data.data?.let { addPhoto(it) }
                }
            }
        }
    }
}
