"""Media files built by hand, byte by byte, for the media tests (no imaging library is a dependency).

Each is a valid file of its format: the JPEG is an 8×8 grey baseline image (one DC and one AC Huffman
code, every coefficient zero), the PNG's pixels decompress to what was written, the GIF is the classic
1×1 GIF89a. The walkers below read them back the way a decoder walks them, without trusting the hub's
own parser.
"""

from __future__ import annotations

import os
import struct
import zlib

# -- EXIF with a GPS position ---------------------------------------------------------------------

GPS_LATITUDE = struct.pack(">6I", 48, 1, 51, 1, 2_437, 100)  # 48° 51' 24.37" N: Paris
GPS_LONGITUDE = struct.pack(">6I", 2, 1, 21, 1, 789, 100)


def exif_with_gps() -> bytes:
    """An EXIF block (TIFF, big-endian) whose IFD0 points at a GPS IFD holding a latitude/longitude."""
    ifd0_at, gps_at = 8, 8 + 2 + 12 + 4
    values_at = gps_at + 2 + 4 * 12 + 4
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x8825, 4, 1, gps_at) + b"\0\0\0\0"
    entries = [
        struct.pack(">HHI4s", 1, 2, 2, b"N\0\0\0"),  # GPSLatitudeRef
        struct.pack(">HHII", 2, 5, 3, values_at),  # GPSLatitude: three rationals
        struct.pack(">HHI4s", 3, 2, 2, b"E\0\0\0"),  # GPSLongitudeRef
        struct.pack(">HHII", 4, 5, 3, values_at + 24),  # GPSLongitude
    ]
    gps = struct.pack(">H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    tiff = b"MM\0*" + struct.pack(">I", ifd0_at) + ifd0 + gps + GPS_LATITUDE + GPS_LONGITUDE
    return b"Exif\0\0" + tiff


# -- JPEG -------------------------------------------------------------------------------------------


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


JFIF = segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")
XMP = segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><dc:creator>Alice</dc:creator></x:xmpmeta>")
IPTC = segment(0xED, b"Photoshop 3.0\08BIM\x04\x04\0\0\0\0\0\x0a\x1c\x02\x50\0\x05Alice")
COMMENT = segment(0xFE, b"shot on Alice's phone")
ICC = segment(0xE2, b"ICC_PROFILE\0\x01\x01" + b"\0" * 32)  # colour: must be kept


def jpeg(*metadata: bytes) -> bytes:
    """An 8x8 grey baseline JPEG with the given segments after its JFIF header."""
    dqt = segment(0xDB, b"\0" + b"\x01" * 64)
    sof0 = segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
    one_code = b"\x01" + b"\0" * 15 + b"\x00"  # one code of length 1 ("0"), for symbol 0
    dht = segment(0xC4, b"\x00" + one_code) + segment(0xC4, b"\x10" + one_code)
    sos = segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    scan = b"\x3f"  # DC difference 0 ("0"), end of block ("0"), padded with ones
    return b"\xff\xd8" + JFIF + b"".join(metadata) + ICC + dqt + sof0 + dht + sos + scan + b"\xff\xd9"


def jpeg_segments(data: bytes) -> list[bytes]:
    """Every segment before the scan, whole, then the scan to the end: how a decoder walks it."""
    assert data[:2] == b"\xff\xd8", "no SOI"
    found, pos = [], 2
    while data[pos + 1] != 0xDA:
        assert data[pos] == 0xFF, f"no marker at {pos}"
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        found.append(data[pos : pos + 2 + length])
        pos += 2 + length
    found.append(data[pos:])
    assert data.endswith(b"\xff\xd9"), "no EOI"
    return found


# -- PNG --------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_pixels(width: int, height: int, *, noise: bool = False) -> bytes:
    """Raw RGB scanlines, each with filter byte 0."""
    row = (lambda: os.urandom(3 * width)) if noise else (lambda: b"\x20\x80\xc0" * width)
    return b"".join(b"\0" + row() for _ in range(height))


def png(width: int = 2, height: int = 2, *extra: bytes, pixels: bytes | None = None, level: int = 9) -> bytes:
    raw = png_pixels(width, height) if pixels is None else pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(raw, level))
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + b"".join(extra) + idat + chunk(b"IEND", b"")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, CRCs checked, IEND last."""
    assert data.startswith(PNG_SIGNATURE)
    found, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + payload
        )
        found.append((kind, payload))
        pos += 12 + length
    assert found[0][0] == b"IHDR" and found[-1] == (b"IEND", b"")
    return found


def png_decoded(data: bytes) -> bytes:
    return zlib.decompress(b"".join(payload for kind, payload in png_chunks(data) if kind == b"IDAT"))


TEXT = chunk(b"tEXt", b"Author\0Alice")
ZTEXT = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"at home"))
ITEXT = chunk(b"iTXt", b"Location\0\0\0\0\0Paris")
EXIF_CHUNK = chunk(b"eXIf", exif_with_gps()[6:])
TIME = chunk(b"tIME", struct.pack(">HBBBBB", 2026, 5, 1, 12, 0, 0))
GAMMA = chunk(b"gAMA", struct.pack(">I", 45455))  # rendering: must be kept


# -- WebP, GIF, videos ------------------------------------------------------------------------------


def riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


VP8L = riff_chunk(b"VP8L", b"\x2f\x00\x00\x00\x00\x88\x88\x08")  # 1x1 lossless bitstream header


def webp(*chunks: bytes, flags: int = 0) -> bytes:
    vp8x = riff_chunk(b"VP8X", bytes((flags, 0, 0, 0)) + b"\0\0\0" + b"\0\0\0")
    body = b"WEBP" + vp8x + VP8L + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


WEBP_EXIF = riff_chunk(b"EXIF", exif_with_gps()[6:])
WEBP_XMP = riff_chunk(b"XMP ", b"<x:xmpmeta><dc:creator>Alice</dc:creator></x:xmpmeta>")

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def mp4(brand: bytes = b"isom", payload: bytes = b"\0" * 64) -> bytes:
    ftyp = b"ftyp" + brand + b"\0\0\x02\0" + b"isomiso2avc1mp41"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + struct.pack(">I", 8 + len(payload)) + b"mdat" + payload


def webm(doctype: bytes = b"webm", payload: bytes = b"\0" * 64) -> bytes:
    def element(element_id: bytes, value: bytes) -> bytes:
        return element_id + bytes((0x80 | len(value),)) + value

    header = b"".join(
        [
            element(b"\x42\x86", b"\x01"),  # EBMLVersion
            element(b"\x42\xf7", b"\x01"),  # EBMLReadVersion
            element(b"\x42\xf2", b"\x04"),  # EBMLMaxIDLength
            element(b"\x42\xf3", b"\x08"),  # EBMLMaxSizeLength
            element(b"\x42\x82", doctype),  # DocType
            element(b"\x42\x87", b"\x04"),  # DocTypeVersion
            element(b"\x42\x85", b"\x02"),  # DocTypeReadVersion
        ]
    )
    segment_ = b"\x18\x53\x80\x67" + b"\x01\x00\x00\x00\x00\x00\x00" + bytes((len(payload),)) + payload
    return b"\x1a\x45\xdf\xa3" + bytes((0x80 | len(header),)) + header + segment_
