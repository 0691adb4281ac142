"""Magic bytes and image processing, without any store."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from nubo.media.imaging import ImageRejected, process_image, same_family, sniff
from tests.helpers.media import jpeg_with_exif, png


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(60), "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n" + bytes(56), "image/png"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"GIF89a" + bytes(10), "image/gif"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(8), "image/heic"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(8), "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  " + bytes(8), "video/quicktime"),
        (b"\x1a\x45\xdf\xa3" + bytes(8), "video/webm"),
        (b"<html><body>", None),
        (b"", None),
    ],
)
def test_sniff_reads_magic_bytes(head: bytes, kind: str | None) -> None:
    assert sniff(head) == kind


def test_same_family() -> None:
    assert same_family("image/jpeg", "image/jpeg")
    assert same_family("video/quicktime", "video/mp4") and same_family("image/heif", "image/heic")
    assert not same_family("image/jpeg", "image/png") and not same_family("image/png", None)


def test_process_image_orients_strips_and_resizes() -> None:
    result = process_image(jpeg_with_exif(2000, 1000, orientation=8), max_pixels=10_000_000)
    assert (result.width, result.height) == (1000, 2000)
    assert [(v.name, v.width, v.height) for v in result.variants] == [("320", 320, 640), ("1080", 1000, 2000)]
    for variant in result.variants:
        image = Image.open(io.BytesIO(variant.data))
        assert image.format == "WEBP" and not image.getexif() and "exif" not in image.info
    assert isinstance(result.placeholder, str) and len(result.placeholder) == 4 + 2 * 4 * 3


def test_small_images_are_never_scaled_up() -> None:
    result = process_image(png(100, 50), max_pixels=10_000)
    assert {(v.width, v.height) for v in result.variants} == {(100, 50)}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (png(5000, 5000, mode="1"), "image_too_large"),
        (jpeg_with_exif(300, 200)[:600], "image_unreadable"),
        (b"not an image at all", "image_unreadable"),
    ],
)
def test_bad_images_are_rejected(data: bytes, code: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        process_image(data, max_pixels=20_000_000)
    assert caught.value.code == code


def test_heic_from_phones_is_accepted() -> None:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 200, 30)).save(out, "HEIF", quality=60)  # pillow-heif's encoder
    data = out.getvalue()
    assert sniff(data[:64]) == "image/heic"
    result = process_image(data, max_pixels=1_000_000)
    assert (result.width, result.height) == (640, 480)
    assert [(v.name, v.width, v.mime) for v in result.variants] == [
        ("320", 320, "image/webp"),
        ("1080", 640, "image/webp"),
    ]
