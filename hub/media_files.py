"""What an uploaded file is, judged by its bytes, and the same file without its metadata.

Pure functions, no I/O. :func:`sniff` names a type from the first :data:`SNIFF_BYTES` bytes and never
from a name or a header. :func:`strip_metadata` returns the file without what can identify its
author or place, or raises :class:`MalformedMedia` when the structure it walks is broken:

- JPEG: the segments before the image data (SOS) are walked; APP1 (EXIF — with its GPS position —
  and XMP), APP13 (IPTC, Photoshop) and COM segments are dropped, every other segment and the image
  data are kept byte for byte. EXIF's orientation goes with it: a photo whose pixels are stored
  sideways shows sideways (keeping it would mean keeping EXIF, or re-encoding).
- PNG: every chunk's length and CRC are checked; tEXt, zTXt, iTXt, eXIf and tIME chunks are dropped,
  and anything after IEND.
- WebP: the RIFF chunks are walked; EXIF and XMP chunks are dropped, the VP8X flags that announce
  them cleared and the RIFF size set to what remains.
- GIF and the videos (MP4, WebM) are kept as they are: their comment and application extensions,
  and a video's metadata boxes or tags, are not stripped.

Nothing is re-encoded: the pixels a client uploaded are the pixels it gets back.
"""

from __future__ import annotations

import zlib

SNIFF_BYTES = 64  # enough for every signature below, WebM's EBML header included

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
VIDEO_TYPES = frozenset({"video/mp4", "video/webm"})
ALLOWED_TYPES = IMAGE_TYPES | VIDEO_TYPES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE = 0x4282
# ISO base media brands of MP4 video. QuickTime's "qt  " is named video/quicktime (not accepted); HEIF
# images (heic, mif1) and audio-only brands (M4A) are not named at all.
_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash", b"M4V ",
     b"MSNV", b"mmp4"}
)  # fmt: skip


class MalformedMedia(ValueError):
    """The bytes begin as a known format but do not hold together (truncated, bad lengths or CRCs)."""


def sniff(head: bytes) -> str | None:
    """The media type the bytes begin with, or None. May name a type outside ALLOWED_TYPES."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _MP4_BRANDS:
            return "video/mp4"
        return "video/quicktime" if brand == b"qt  " else None
    if head.startswith(_EBML_MAGIC):
        # Matroska and WebM share the magic; the EBML header's DocType tells them apart.
        return {b"webm": "video/webm", b"matroska": "video/x-matroska"}.get(_ebml_doctype(head) or b"")
    return None


def strip_metadata(content_type: str, data: bytes) -> bytes:
    """``data`` without its metadata (see the module docstring); raises MalformedMedia."""
    if content_type == "image/jpeg":
        return _strip_jpeg(data)
    if content_type == "image/png":
        return _strip_png(data)
    if content_type == "image/webp":
        return _strip_webp(data)
    return data


# -- EBML (WebM) ------------------------------------------------------------------------------------


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``pos``: (value, position after it), or None."""
    if pos >= len(data) or data[pos] == 0:
        return None
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(data):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = value << 8 | byte
    return value, pos + length


def _ebml_doctype(head: bytes) -> bytes | None:
    size = _vint(head, 4, keep_marker=False)
    if size is None:
        return None
    pos = size[1]
    end = min(len(head), pos + size[0])
    while pos < end:
        element = _vint(head, pos, keep_marker=True)
        length = _vint(head, element[1], keep_marker=False) if element else None
        if element is None or length is None:
            return None
        if element[0] == _EBML_DOCTYPE:
            return head[length[1] : length[1] + length[0]]
        pos = length[1] + length[0]
    return None


# -- JPEG -------------------------------------------------------------------------------------------

_JPEG_DROPPED = frozenset({0xE1, 0xED, 0xFE})  # APP1 (EXIF, XMP), APP13 (IPTC), COM
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows


def _strip_jpeg(data: bytes) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise MalformedMedia("a JPEG starts with SOI")
    out = bytearray(b"\xff\xd8")
    pos = 2
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise MalformedMedia(f"the JPEG has no segment marker at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes may pad before a marker
            pos += 1
        if pos >= len(data):
            raise MalformedMedia("the JPEG ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if marker in (0x00, 0xD8, 0xD9):
            raise MalformedMedia(f"the JPEG has a misplaced marker FF{marker:02X} before its image data")
        if pos + 2 > len(data):
            raise MalformedMedia("the JPEG ends inside a segment length")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > len(data):
            raise MalformedMedia(f"the JPEG segment FF{marker:02X} at byte {pos - 2} is truncated")
        if marker == 0xDA:  # SOS: the image data follows, to the end; kept as it is
            if data.find(b"\xff\xd9", pos + length) == -1:
                raise MalformedMedia("the JPEG image data is truncated (no EOI)")
            out += b"\xff\xda"
            out += data[pos:]
            return bytes(out)
        if marker not in _JPEG_DROPPED:
            out += bytes((0xFF, marker))
            out += data[pos : pos + length]
        pos += length


# -- PNG --------------------------------------------------------------------------------------------

_PNG_DROPPED = frozenset({b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"})


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(PNG_SIGNATURE):
        raise MalformedMedia("a PNG starts with its signature")
    view = memoryview(data)
    out = bytearray(PNG_SIGNATURE)
    pos = len(PNG_SIGNATURE)
    first = True
    while True:
        if pos + 12 > len(data):
            raise MalformedMedia("the PNG ends before its IEND chunk")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise MalformedMedia(f"the PNG has a malformed chunk header at byte {pos}")
        if end > len(data):
            raise MalformedMedia(f"the PNG chunk {kind.decode()} at byte {pos} is truncated")
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            raise MalformedMedia(f"the PNG chunk {kind.decode()} at byte {pos} fails its CRC")
        if first and kind != b"IHDR":
            raise MalformedMedia("a PNG's first chunk is IHDR")
        first = False
        if kind not in _PNG_DROPPED:
            out += view[pos:end]
        if kind == b"IEND":
            return bytes(out)  # what follows IEND is no part of the image
        pos = end


# -- WebP -------------------------------------------------------------------------------------------

_WEBP_DROPPED = frozenset({b"EXIF", b"XMP "})
_WEBP_IMAGE_FIRST = frozenset({b"VP8 ", b"VP8L", b"VP8X"})
_VP8X_METADATA_FLAGS = 0x08 | 0x04  # EXIF, XMP present


def _strip_webp(data: bytes) -> bytes:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MalformedMedia("a WebP starts with a RIFF WEBP header")
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        raise MalformedMedia("the WebP is shorter than its RIFF header says")
    chunks: list[bytes] = []
    pos = 12
    while pos < end:
        if pos + 8 > end:
            raise MalformedMedia(f"the WebP ends inside a chunk header at byte {pos}")
        kind = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + size > end:
            raise MalformedMedia(f"the WebP chunk {kind!r} at byte {pos} is truncated")
        padded = min(size + (size & 1), end - pos - 8)  # chunks are padded to an even size
        if not chunks and kind not in _WEBP_IMAGE_FIRST:
            raise MalformedMedia("a WebP's first chunk is VP8, VP8L or VP8X")
        chunk = data[pos : pos + 8 + padded]
        if kind == b"VP8X" and size >= 1:
            chunk = chunk[:8] + bytes((chunk[8] & ~_VP8X_METADATA_FLAGS & 0xFF,)) + chunk[9:]
        if kind not in _WEBP_DROPPED:
            chunks.append(chunk)
        pos += 8 + padded
    if not chunks:
        raise MalformedMedia("the WebP holds no image")
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + len(body).to_bytes(4, "little") + body
