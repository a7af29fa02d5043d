import Foundation

/// Projected image tokens `[1, count, dim]` as float32, whatever runtime produced them.
public struct ImageTokens {
    public let count: Int
    public let dim: Int
    public let values: [Float]

    public init(count: Int, dim: Int, values: [Float]) {
        self.count = count
        self.dim = dim
        self.values = values
    }
}

/// One runtime's calls for a chat turn (mobilepeft/export/bench.py `Methods`): the vision encoder, one
/// prefill of a new conversation, and single-token decode steps through the KV cache. Each
/// returns the greedy next token (argmax of the last position's logits).
public protocol InferenceEngine: AnyObject {
    /// The JSON's `runtime`: `executorch` or `coreml`.
    var runtime: String { get }
    var backend: String { get }
    var quantization: String { get }
    var threads: Int { get }
    /// Loads (and for Core ML compiles) the programs; the benchmark times it.
    func load() throws
    /// Normalised NCHW pixels (`ImagePreprocessor`) -> image tokens.
    func encodeImage(_ pixels: [Float]) throws -> ImageTokens
    /// A new conversation: the image tokens then `promptIds` (no image slot) at positions
    /// 0..<count+promptIds.count in one decoder call.
    func prefill(imageTokens: ImageTokens, promptIds: [Int]) throws -> Int
    /// One token at `position`.
    func step(token: Int, position: Int) throws -> Int
}

public struct ChatTurnSettings {
    public var promptLength = 32
    public var genLength = 32
    public var runs = 5
    public var warmup = 1

    public init(promptLength: Int = 32, genLength: Int = 32, runs: Int = 5, warmup: Int = 1) {
        self.promptLength = promptLength
        self.genLength = genLength
        self.runs = runs
        self.warmup = warmup
    }
}

/// One chat turn's timings.
public struct ChatTurnSample {
    public let visionEncodeMs: Double
    public let prefillTokensPerS: Double
    public let decodeTokensPerS: Double
    public let timeToFirstTokenMs: Double
}

/// `mobilepeft bench` on the phone: a run encodes one image, prefills the image tokens plus
/// `promptLength` text tokens in one decoder call, then decodes `genLength` greedy tokens
/// (mobilepeft/export/bench.py `_one_run`); the figures are medians over `runs` after `warmup` runs.
public struct ChatTurnBenchmark {
    public let settings: ChatTurnSettings
    public let numImageTokens: Int
    public let pixels: [Float]
    public let promptIds: [Int]

    public init(manifest: Manifest, settings: ChatTurnSettings) throws {
        guard settings.promptLength >= 1, settings.genLength >= 1, settings.runs >= 1, settings.warmup >= 0 else {
            throw MobilePEFTError("prompt length, generated tokens and runs must be at least 1 (warm-up at least 0)")
        }
        let maxSeqLen = try manifest.int("max_seq_len")
        numImageTokens = try manifest.int("model.num_image_tokens")
        guard numImageTokens + settings.promptLength + settings.genLength + 1 <= maxSeqLen else {
            throw MobilePEFTError("image tokens (\(numImageTokens)) + prompt length + generated tokens exceed the bundle's max_seq_len \(maxSeqLen); shorten them or re-export with a larger --max-seq-len")
        }
        self.settings = settings
        // A fixed random image and prompt that fit the bundle (bench_inputs: pixels in [-1.5, 1.5),
        // ids in [3, min(vocab, 500))); seeded, though not the host's torch generator.
        let size = try manifest.int("image_preprocessing.size")
        let vocab = try manifest.int("model.vocab_size")
        var generator = SeededGenerator(seed: 0)
        pixels = (0..<(3 * size * size)).map { _ in Float.random(in: -1.5..<1.5, using: &generator) }
        promptIds = (0..<settings.promptLength).map { _ in Int.random(in: 3..<max(min(vocab, 500), 4), using: &generator) }
    }

    /// One chat turn on a loaded engine.
    public func runOnce(_ engine: InferenceEngine) throws -> ChatTurnSample {
        let (image, visionMs) = try timed { try engine.encodeImage(pixels) }
        let (first, prefillMs) = try timed { try engine.prefill(imageTokens: image, promptIds: promptIds) }
        var token = first
        var position = image.count + promptIds.count
        let (_, decodeMs) = try timed {
            for _ in 0..<settings.genLength {
                token = try engine.step(token: token, position: position)
                position += 1
            }
        }
        return ChatTurnSample(visionEncodeMs: visionMs,
                              prefillTokensPerS: Double(image.count + promptIds.count) / (prefillMs / 1000),
                              decodeTokensPerS: Double(settings.genLength) / (decodeMs / 1000),
                              timeToFirstTokenMs: visionMs + prefillMs)
    }

    /// Loads the engine (timed), runs warm-up and measured turns, and returns the bench JSON.
    /// `harness`: `ios-xctest` or `ios-app`.
    public func run(_ engine: InferenceEngine, harness: String,
                    progress: ((String) -> Void)? = nil) throws -> BenchResult {
        let (_, loadMs) = try timed { try engine.load() }
        progress?("loaded in \(Int(loadMs)) ms")
        var samples: [ChatTurnSample] = []
        let total = settings.warmup + settings.runs
        for i in 0..<total {
            let sample = try runOnce(engine)
            if i >= settings.warmup { samples.append(sample) }
            progress?("run \(i + 1)/\(total)" + (i < settings.warmup ? " (warm-up)" : ""))
        }
        let vision = try BenchStats(samples.map(\.visionEncodeMs))
        let prefill = try BenchStats(samples.map(\.prefillTokensPerS))
        let decode = try BenchStats(samples.map(\.decodeTokensPerS))
        let ttft = try BenchStats(samples.map(\.timeToFirstTokenMs))
        var result = BenchResult()
        result.put("model_load_time_ms", loadMs)
        result.putStats("vision_encode_ms", vision)
        result.putStats("prefill_tokens_per_s", prefill)
        result.putStats("decode_tokens_per_s", decode)
        result.putStats("time_to_first_token_ms", ttft)
        result.put("peak_rss_mb", DeviceInfo.peakRSSMegabytes())
        result.put("threads", engine.threads)
        result.put("backend", engine.backend)
        result.put("quantization", engine.quantization)
        result.put("device", DeviceInfo.description)
        result.put("runtime", engine.runtime)
        result.put("harness", harness)
        result.put("prompt_tokens", numImageTokens + settings.promptLength)
        result.put("generated_tokens", settings.genLength)
        result.put("runs", settings.runs)
        return result
    }
}
