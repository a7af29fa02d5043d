import CoreGraphics
import Foundation
import ImageIO

/// Photos as the preprocessing wants them: decoded, EXIF orientation applied, no larger than
/// needed (a 48 MP photo would otherwise cost ~200 MB just to be shrunk to a few hundred pixels).
public enum ImageLoading {
    public static func cgImage(from data: Data, maxPixelSize: Int = 2048) throws -> CGImage {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil) else {
            throw MobilePEFTError("the photo's data is not an image format iOS can read")
        }
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true,
            kCGImageSourceThumbnailMaxPixelSize: maxPixelSize,
        ]
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
            throw MobilePEFTError("the photo could not be decoded")
        }
        return image
    }

    public static func cgImage(contentsOf url: URL, maxPixelSize: Int = 2048) throws -> CGImage {
        do {
            return try cgImage(from: try Data(contentsOf: url), maxPixelSize: maxPixelSize)
        } catch let error as MobilePEFTError {
            throw MobilePEFTError("\(url.lastPathComponent): \(error.message)")
        } catch {
            throw MobilePEFTError("cannot read \(url.path) (\(error.localizedDescription))")
        }
    }
}
