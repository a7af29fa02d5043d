import Foundation
import MobilePEFTCore

/// A bundle folder the user picked (Files, or the app's own Documents): security-scoped access
/// held for as long as this object lives, and its manifest read and its files verified (size and
/// SHA-256, see BundleVerifier) before anything is loaded from it.
final class BundleFolder {
    let url: URL
    let manifest: Manifest
    private let scoped: Bool

    init(url: URL) throws {
        let scoped = url.startAccessingSecurityScopedResource()
        do {
            manifest = try Manifest.load(directory: url)
        } catch {
            if scoped { url.stopAccessingSecurityScopedResource() }
            throw error
        }
        self.url = url
        self.scoped = scoped
    }

    deinit {
        if scoped { url.stopAccessingSecurityScopedResource() }
    }

    var name: String { url.lastPathComponent }

    /// The app's Documents folder (shared with Finder and Files: drop bundles there).
    static var documents: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    }
}
