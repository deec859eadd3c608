"""A file's type comes from its bytes; images lose their metadata and nothing else; broken ones are
refused (hub/media_files.py)."""

from __future__ import annotations

import pytest

from hub.media_files import ALLOWED_TYPES, MalformedMedia, sniff, strip_metadata
from tests import media_samples as s


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (s.jpeg(), "image/jpeg"),
        (s.png(), "image/png"),
        (s.GIF, "image/gif"),
        (b"GIF87a" + s.GIF[6:], "image/gif"),
        (s.webp(), "image/webp"),
        (s.mp4(), "video/mp4"),
        (s.mp4(b"mp42"), "video/mp4"),
        (s.webm(), "video/webm"),
        (s.mp4(b"qt  "), "video/quicktime"),
        (s.webm(b"matroska"), "video/x-matroska"),
        (s.mp4(b"heic"), None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"%PDF-1.7\n", None),
        (b"RIFF\0\0\0\0WAVEfmt ", None),
        (b"\x1a\x45\xdf\xa3", None),  # EBML magic, header cut off
        (b"", None),
    ],
)
def test_the_type_is_named_by_the_bytes_alone(data: bytes, expected: str | None) -> None:
    assert sniff(data[:64]) == expected


def test_only_images_and_mp4_webm_videos_are_allowed() -> None:
    assert {"image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4", "video/webm"} == ALLOWED_TYPES


def test_a_jpeg_loses_exif_gps_xmp_iptc_and_comments_and_keeps_every_other_byte() -> None:
    exif = s.segment(0xE1, s.exif_with_gps())
    original = s.jpeg(exif, s.XMP, s.IPTC, s.COMMENT)
    assert s.GPS_LATITUDE in original
    stripped = strip_metadata("image/jpeg", original)
    assert stripped == s.jpeg()
    assert s.GPS_LATITUDE not in stripped and s.GPS_LONGITUDE not in stripped and b"Alice" not in stripped
    kept = s.jpeg_segments(stripped)
    assert s.JFIF in kept and s.ICC in kept  # the JFIF header and the colour profile stay


def test_a_jpeg_with_fill_bytes_before_a_marker_is_read() -> None:
    original = s.jpeg(s.COMMENT)
    padded = original.replace(s.COMMENT, b"\xff\xff" + s.COMMENT)
    assert strip_metadata("image/jpeg", padded) == s.jpeg()


def test_a_png_loses_its_text_exif_and_time_chunks_and_keeps_its_pixels() -> None:
    original = s.png(3, 2, s.TEXT, s.ZTEXT, s.ITEXT, s.EXIF_CHUNK, s.TIME, s.GAMMA)
    stripped = strip_metadata("image/png", original)
    kinds = [kind for kind, _ in s.png_chunks(stripped)]
    assert kinds == [b"IHDR", b"gAMA", b"IDAT", b"IEND"]
    assert s.png_decoded(stripped) == s.png_pixels(3, 2)
    assert s.GPS_LATITUDE not in stripped and b"Alice" not in stripped


def test_bytes_after_a_pngs_iend_are_dropped() -> None:
    assert strip_metadata("image/png", s.png() + b"GPS 48.85N") == s.png()


def test_a_webp_loses_exif_and_xmp_and_its_flags_and_size_say_so() -> None:
    original = s.webp(s.WEBP_EXIF, s.WEBP_XMP, flags=0x08 | 0x04 | 0x10)  # 0x10: alpha, kept
    stripped = strip_metadata("image/webp", original)
    assert stripped == s.webp(flags=0x10)
    assert int.from_bytes(stripped[4:8], "little") == len(stripped) - 8
    assert s.GPS_LATITUDE not in stripped and b"Alice" not in stripped


@pytest.mark.parametrize("content_type", ["image/gif", "video/mp4", "video/webm"])
def test_gifs_and_videos_are_kept_as_they_are(content_type: str) -> None:
    data = {"image/gif": s.GIF, "video/mp4": s.mp4(), "video/webm": s.webm()}[content_type]
    assert strip_metadata(content_type, data) is data


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("image/jpeg", s.jpeg()[:40]),  # cut inside a segment
        ("image/jpeg", s.jpeg()[:-2]),  # the scan without its EOI
        ("image/jpeg", b"\xff\xd8\xff\xd9"),  # no image at all
        ("image/jpeg", b"\xff\xd8\xff\xe1\x00\x01"),  # a length below 2
        ("image/jpeg", b"\xff\xd8\x00\x00"),  # no marker
        ("image/png", s.png()[:30]),  # cut inside IHDR
        ("image/png", s.png()[:-12]),  # no IEND
        ("image/png", s.png().replace(b"IHDR", b"IHDr")),  # the CRC no longer matches
        ("image/png", s.PNG_SIGNATURE + s.GAMMA + s.png()[8:]),  # IHDR not first
        ("image/webp", s.webp()[:-3]),  # shorter than its RIFF size
        ("image/webp", b"RIFF\x0c\0\0\0WEBPVP8L\xff\0\0\0"),  # a chunk past the end
        ("image/webp", b"RIFF\x04\0\0\0WEBP"),  # no image
        ("image/webp", b"RIFF\x0c\0\0\0WEBPEXIF\0\0\0\0"),  # metadata first
    ],
)
def test_a_broken_image_is_malformed(content_type: str, data: bytes) -> None:
    with pytest.raises(MalformedMedia):
        strip_metadata(content_type, data)
