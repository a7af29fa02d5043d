import CryptoKit
import Foundation

/// How much of a bundle `BundleVerifier` checks before the bundle is used.
public enum BundleVerification {
    /// Size and SHA-256 of every listed file, all hashed (then the stamp is written).
    case full
    /// Size and SHA-256, skipping the hash of a file the stamp shows unchanged (the default).
    case cached
    /// Sizes only. Unsafe: a file overwritten in place (same size) passes.
    case size
}

/// What a verification did: the files it hashed, those the stamp vouched for, and the stamp now in place.
public struct VerifyReport {
    public let hashed: [String]
    public let unchanged: [String]
    public let stamp: URL?
}

/// Checks a bundle before anything is loaded from it: every file `manifest.json` lists must have
/// the recorded size and SHA-256 (a size check alone passes a .pte with 4 KB overwritten, which
/// then loads and generates garbage).
///
/// Hashing a 1 GB .pte takes about a second, so after a successful verification a stamp is written
/// to `stampDirectory` (outside the bundle; the name is the SHA-256 of the bundle's path + ".json"),
/// recording per file the manifest's sha256 and what FileManager says about the file: size,
/// modification date (in ns), file number (inode) and file system number (device); FileManager
/// reports no ctime. Next time a file whose recorded fields and manifest sha256 are unchanged is
/// not hashed again; every other file is. A write moves the modification date, a replacement
/// changes the file number, so a modified file is hashed again.
/// Timestamps are coarse (a clock tick), so a file changed less than 2 s before the verification
/// started is hashed but not recorded: a second write within the same tick could leave its date as
/// recorded. A stamp directory that is nil, unreadable or unwritable only means hashing everything
/// each time. The Android core (BundleVerifier.kt) and the native runner (verify.h) follow the same rule.
public struct BundleVerifier {
    private static let settleSeconds: TimeInterval = 2
    private static let blockSize = 1 << 20

    public let stampDirectory: URL?
    public let mode: BundleVerification

    public init(stampDirectory: URL? = BundleVerifier.defaultStampDirectory, mode: BundleVerification = .cached) {
        self.stampDirectory = stampDirectory
        self.mode = mode
    }

    /// Caches/mobilepeft/verified in the app's container (iOS may empty it: everything is then hashed once more).
    public static var defaultStampDirectory: URL? {
        FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask).first?
            .appendingPathComponent("mobilepeft/verified", isDirectory: true)
    }

    /// Throws naming the first file that is missing, has the wrong size or the wrong SHA-256.
    @discardableResult
    public func verify(_ manifest: Manifest) throws -> VerifyReport {
        let files = try BundleVerifier.listedFiles(manifest)
        try BundleVerifier.checkSizes(files, in: manifest.directory)  // a truncated copy is named as such, unhashed
        guard mode != .size else { return VerifyReport(hashed: [], unchanged: [], stamp: nil) }
        let started = Date()
        let bundlePath = manifest.directory.standardizedFileURL.resolvingSymlinksInPath().path
        let stampURL = stampDirectory?.appendingPathComponent(BundleVerifier.hex(SHA256.hash(data: Data(bundlePath.utf8))) + ".json")
        var previous: [String: StampEntry] = [:]
        if mode == .cached, let stampURL, let recorded = BundleVerifier.readStamp(stampURL) { previous = recorded }
        var verified: [String: StampEntry] = [:]
        var hashed: [String] = []
        var unchanged: [String] = []
        for file in files {
            let url = manifest.directory.appendingPathComponent(file.path)
            // Taken before hashing: a write during the hash leaves the stamp with a stale identity.
            guard let identity = FileIdentity(of: url) else {
                throw MobilePEFTError("\(url.path): listed in \(Manifest.fileName) but missing; copy the whole bundle folder")
            }
            if let recorded = previous[file.path], recorded.sha256 == file.sha256, recorded.identity == identity {
                unchanged.append(file.path)
                verified[file.path] = recorded
                continue
            }
            let actual = try BundleVerifier.sha256(of: url)
            hashed.append(file.path)
            guard actual == file.sha256 else {
                throw MobilePEFTError("\(url.path): SHA-256 is \(actual), \(Manifest.fileName) records \(file.sha256) for \(file.path); "
                    + "the file is corrupt or was changed after export: copy the bundle again, or re-export it with `mobilepeft export`")
            }
            if identity.settled(before: started, by: BundleVerifier.settleSeconds) {
                verified[file.path] = StampEntry(sha256: file.sha256, identity: identity)
            }
        }
        var stamp: URL? = nil
        if let stampURL {
            let stillTrue = !previous.isEmpty && hashed.isEmpty && verified.count == previous.count
            if stillTrue || BundleVerifier.writeStamp(stampURL, bundlePath: bundlePath, entries: verified) { stamp = stampURL }
        }
        return VerifyReport(hashed: hashed, unchanged: unchanged, stamp: stamp)
    }

    /// Lowercase hex SHA-256 of a file's content (as manifest.json records it), read in 1 MiB blocks.
    public static func sha256(of url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let block = try autoreleasepool { try handle.read(upToCount: blockSize) }
            guard let block, !block.isEmpty else { break }
            hasher.update(data: block)
        }
        return hex(hasher.finalize())
    }

    private static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }

    // MARK: - Sizes

    private struct ListedFile {
        let path: String
        let bytes: Int
        let sha256: String
    }

    private static func listedFiles(_ manifest: Manifest) throws -> [ListedFile] {
        try manifest.keys("files{}").map { name in
            ListedFile(path: name, bytes: try manifest.int("files{}.bytes", name), sha256: try manifest.string("files{}.sha256", name))
        }
    }

    private static func checkSizes(_ files: [ListedFile], in directory: URL) throws {
        for file in files {
            let path = directory.appendingPathComponent(file.path).path
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                  let size = (attributes[.size] as? NSNumber)?.intValue else {
                throw MobilePEFTError("\(Manifest.fileName): files{\(file.path)} is missing from the bundle (\(path)); copy the bundle again")
            }
            guard size == file.bytes else {
                throw MobilePEFTError("\(Manifest.fileName): files{\(file.path)} has \(size) bytes, the manifest says \(file.bytes); the copy is truncated or corrupt, copy the bundle again")
            }
        }
    }

    // MARK: - Stamp

    /// What FileManager says about one version of a file; a write changes the date, a replacement the file number.
    struct FileIdentity: Equatable {
        let bytes: Int64
        let mtimeNs: Int64
        let inode: Int64?
        let device: Int64?

        init?(of url: URL) {
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
                  let size = (attributes[.size] as? NSNumber)?.int64Value,
                  let modified = attributes[.modificationDate] as? Date else { return nil }
            bytes = size
            mtimeNs = Int64((modified.timeIntervalSince1970 * 1e9).rounded())
            inode = (attributes[.systemFileNumber] as? NSNumber)?.int64Value
            device = (attributes[.systemNumber] as? NSNumber)?.int64Value
        }

        init(bytes: Int64, mtimeNs: Int64, inode: Int64?, device: Int64?) {
            self.bytes = bytes
            self.mtimeNs = mtimeNs
            self.inode = inode
            self.device = device
        }

        func settled(before start: Date, by seconds: TimeInterval) -> Bool {
            Double(mtimeNs) / 1e9 <= start.timeIntervalSince1970 - seconds
        }
    }

    /// One file in the stamp: the same keys as the native runner's stamps, less ctime_ns.
    struct StampEntry: Codable {
        let sha256: String
        let bytes: Int64
        let mtimeNs: Int64
        let inode: Int64?
        let device: Int64?

        enum CodingKeys: String, CodingKey {
            case sha256, bytes, inode, device
            case mtimeNs = "mtime_ns"
        }

        init(sha256: String, identity: FileIdentity) {
            self.sha256 = sha256
            bytes = identity.bytes
            mtimeNs = identity.mtimeNs
            inode = identity.inode
            device = identity.device
        }

        var identity: FileIdentity { FileIdentity(bytes: bytes, mtimeNs: mtimeNs, inode: inode, device: device) }
    }

    private struct Stamp: Codable {
        let bundle: String
        let files: [String: StampEntry]
    }

    /// The stamp's entries; nil when it is missing, unreadable or malformed.
    private static func readStamp(_ url: URL) -> [String: StampEntry]? {
        guard let data = try? Data(contentsOf: url) else { return nil }
        return (try? JSONDecoder().decode(Stamp.self, from: data))?.files
    }

    /// Written to a temporary file and renamed over the old stamp (`.atomic`); false when it cannot be written.
    private static func writeStamp(_ url: URL, bundlePath: String, entries: [String: StampEntry]) -> Bool {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(Stamp(bundle: bundlePath, files: entries)) else {
            return false
        }
        do {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: url, options: .atomic)
            return true
        } catch {
            return false
        }
    }
}
