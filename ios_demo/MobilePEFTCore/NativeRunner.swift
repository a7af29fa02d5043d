import Foundation
import MobilePEFTRunner

/// The native runner (runner/, C++) in the app's process through its C API
/// (runner/include/mobilepeft/runner.h): the bundle's ExecuTorch program loaded once, answers at
/// deployment speed, and the personalized adapter swapped in place (checked against the manifest,
/// copied over the live tensors; the base is never reloaded). The Personalize screen answers with
/// it after writing `adapter-<bundle>.ptd` (docs/on-device-loop.md). One thread at a time.
public final class NativeRunner {
    private var handle: OpaquePointer?

    private init(handle: OpaquePointer) {
        self.handle = handle
    }

    deinit {
        close()
    }

    /// Free the program and the adapter now (also done when the runner is released).
    public func close() {
        mobilepeft_runner_close(handle)
        handle = nil
    }

    /// Verify the bundle's files and load its program with `threads` XNNPACK threads. The runner keeps
    /// its verification stamps under the caches folder (its default, `~/.cache`, is not writable here).
    public static func open(bundle: URL, threads: Int) throws -> NativeRunner {
        if getenv("XDG_CACHE_HOME") == nil,
           let caches = FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask).first {
            setenv("XDG_CACHE_HOME", caches.path, 0)
        }
        var error: UnsafeMutablePointer<CChar>?
        guard let handle = mobilepeft_runner_open(bundle.path, Int32(threads), &error) else {
            throw failure(error, "cannot open \(bundle.path)")
        }
        return NativeRunner(handle: handle)
    }

    /// Whether the bundle keeps its adapter as data (exported with `--adapter-as-data`), so `swap` works.
    public var keepsAdapterAsData: Bool {
        mobilepeft_runner_keeps_adapter_as_data(handle) != 0
    }

    /// The adapter file answering now: the bundle's own until a swap; nil when the adapter is merged.
    public var activeAdapter: String? {
        mobilepeft_runner_active_adapter(handle).map { String(cString: $0) }
    }

    /// Replace the active adapter with `adapter` (an `adapter.ptd` for this bundle); the milliseconds
    /// it took. A file that does not fit is refused naming the tensor, and the active adapter stays.
    @discardableResult
    public func swap(to adapter: URL) throws -> Double {
        var error: UnsafeMutablePointer<CChar>?
        let ms = mobilepeft_runner_swap(try live(), adapter.path, &error)
        if ms < 0 { throw NativeRunner.failure(error, "cannot swap in \(adapter.path)") }
        return ms
    }

    /// A greedy answer in a fresh conversation; `image`: binary PPM, or raw float32 pixel values
    /// (`.f32`, see `pixelFile`).
    public func answer(_ prompt: String, image: URL?, maxNewTokens: Int = 32) throws -> String {
        var error: UnsafeMutablePointer<CChar>?
        guard let text = mobilepeft_runner_answer(try live(), prompt, image?.path ?? "", Int32(maxNewTokens), &error) else {
            throw NativeRunner.failure(error, "the native runner could not answer")
        }
        defer { mobilepeft_string_free(text) }
        return String(cString: text)
    }

    /// The process's resident memory now, in MB.
    public static var rssMb: Double { mobilepeft_runner_rss_mb() }

    /// `pixels` (a preprocessed photo, [1, 3, S, S]) as the raw little-endian float32 file `answer` takes.
    @discardableResult
    public static func pixelFile(_ pixels: [Float], to url: URL) throws -> URL {
        let data = pixels.withUnsafeBytes { Data($0) }  // Apple's CPUs are little-endian
        try AtomicFiles.replace(url, sidecarSuffix: nil) { try data.write(to: $0) }
        return url
    }

    private func live() throws -> OpaquePointer {
        guard let handle else { throw MobilePEFTError("the native runner is closed") }
        return handle
    }

    private static func failure(_ error: UnsafeMutablePointer<CChar>?, _ fallback: String) -> MobilePEFTError {
        guard let error else { return MobilePEFTError(fallback) }
        defer { mobilepeft_string_free(error) }
        return MobilePEFTError(String(cString: error))
    }
}
