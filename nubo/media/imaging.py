"""What a file really is (its magic bytes, not its declared type), and the processing of an image.

Pure CPU work with no store: the caller runs :func:`process_image` in a thread. An image is decoded by Pillow
only after its header says it is under the pixel limit (a decompression bomb is refused before any pixel is
decoded); its orientation is applied, and it is re-encoded as WebP at each width, so no variant carries the
upload's EXIF (GPS position, camera) or other metadata. The placeholder is a blurhash of a 32 px thumbnail.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import blurhash
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # phones upload HEIC; the plugin is optional (it ships libheif in its wheel)
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIC = True
except ImportError:  # pragma: no cover - depends on the platform's wheels
    HEIC = False

IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    **({"image/heic": "HEIF", "image/heif": "HEIF"} if HEIC else {}),
}
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/webm")
VARIANT_WIDTHS = (320, 1080)
WEBP_QUALITY = 80
PLACEHOLDER_SIDE = 32
MAGIC_BYTES = 64  # how much of a file :func:`sniff` needs
ORIENTATION_TAG = 0x0112


class ImageRejected(ValueError):
    """The file is not an image nubo accepts; `code` says why (stable snake_case)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sniff(head: bytes) -> str | None:
    """The media type that a file's first bytes show, or None when nubo does not know them."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"hevc"):
            return "image/heic"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    return None


def same_family(declared: str, sniffed: str | None) -> bool:
    """Whether a file of type `sniffed` may be stored as `declared` (mp4 and quicktime share a container)."""
    if sniffed is None:
        return False
    aliases = {"image/heif": "image/heic", "video/quicktime": "video/mp4"}
    return aliases.get(declared, declared) == aliases.get(sniffed, sniffed)


@dataclass(frozen=True)
class Variant:
    """One re-encoded size of an image."""

    name: str
    data: bytes
    width: int
    height: int
    mime: str = "image/webp"


@dataclass(frozen=True)
class ProcessedImage:
    """The oriented image's size, its variants (smallest first) and its blurhash placeholder."""

    width: int
    height: int
    variants: list[Variant]
    placeholder: str


def process_image(data: bytes, max_pixels: int, widths: tuple[int, ...] = VARIANT_WIDTHS) -> ProcessedImage:
    """Decode, orient, strip and re-encode `data`; :class:`ImageRejected` for anything nubo will not keep."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageRejected(
                    "image_too_large", f"the image has {image.width}x{image.height} pixels, over {max_pixels}"
                )
            width, height = _oriented_size(image)
            if image.format == "JPEG":  # decode at the smallest 1/2^n scale still covering the widest variant
                image.draft("RGB", (max(widths), max(widths)))
            image.load()
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("image_too_large", f"the image is too large: {exc}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected("image_unreadable", f"the image cannot be decoded: {exc}") from None
    oriented = ImageOps.exif_transpose(image)
    rgb = oriented.convert("RGBA" if _has_alpha(oriented) else "RGB")
    rgb.info = {}  # no EXIF, XMP or comment may reach an encoder that would copy it from `info`
    variants: list[Variant] = []
    source = rgb
    for target in sorted(widths, reverse=True):  # each size from the next larger one: fewer pixels to filter
        variant, source = _variant(source, target)
        variants.insert(0, variant)
    return ProcessedImage(width, height, variants, _placeholder(source))


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """The full size once the EXIF orientation is applied (orientations 5-8 turn the image a quarter)."""
    orientation = image.getexif().get(ORIENTATION_TAG, 1)
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else (image.width, image.height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _variant(image: Image.Image, width: int) -> tuple[Variant, Image.Image]:
    """`image` scaled down to `width` (never up) and encoded as WebP with no metadata; and the scaled image."""
    scaled = image
    if image.width > width:
        height = max(1, round(image.height * width / image.width))
        scaled = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    scaled.save(out, "WEBP", quality=WEBP_QUALITY, method=4)  # no exif= / icc_profile=: nothing copied
    return Variant(str(width), out.getvalue(), scaled.width, scaled.height), scaled


def _placeholder(image: Image.Image) -> str:
    small = image.convert("RGB")
    small.thumbnail((PLACEHOLDER_SIDE, PLACEHOLDER_SIDE), Image.Resampling.BILINEAR)
    raw, width = small.tobytes(), small.width
    rows = [[raw[(y * width + x) * 3 : (y * width + x) * 3 + 3] for x in range(width)] for y in range(small.height)]
    code: str = blurhash.encode(rows, components_x=4, components_y=3)
    return code
