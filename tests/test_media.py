"""Media uploads through a running hub over real sockets: each accepted type stored and served through
a signed URL, images without their metadata, every refusal a coded problem that stores nothing, and
the helpers the review code calls. The stores' own contract is tests/test_media_store.py.

The hub here runs on SQLite only: media never touch the database.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.media import media_urls, owned_media, sign
from tests import media_samples as s
from tests.conftest import JWT_SECRET, Hub, hub_settings, running_hub, token

MiB = 1024 * 1024


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = hub_settings(str(tmp_path / "hub.sqlite3"), media_dir=str(tmp_path / "media"))
    async with running_hub(settings) as running:
        yield running


@pytest.fixture
async def small_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """Limits small enough to test their edges: images 50,000 bytes, videos 80,000."""
    settings = hub_settings(
        str(tmp_path / "hub.sqlite3"),
        media_dir=str(tmp_path / "media"),
        media_max_image_bytes=50_000,
        media_max_video_bytes=80_000,
    )
    async with running_hub(settings) as running:
        yield running


async def upload(hub: Hub, data: Any, content_type: str, who: str | None = None) -> tuple[int, Any, Any]:
    bearer = hub.alice if who is None else who
    if isinstance(data, bytes):
        data = io.BytesIO(data)  # sent with its Content-Length; aiohttp warns about large bytes
    return await hub.call(
        "POST", "/api/v1/media", token=bearer, data=data, headers={"Content-Type": content_type}
    )


async def fetch(hub: Hub, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with hub.session.get(hub.base + url, headers=headers or {}) as response:
        return response.status, await response.read(), response.headers


def stored_files(tmp_path: Path) -> list[Path]:
    media = tmp_path / "media"
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


# -- uploads that are accepted ----------------------------------------------------------------------

ACCEPTED = [
    ("image/jpeg", s.jpeg()),
    ("image/png", s.png()),
    ("image/gif", s.GIF),
    ("image/webp", s.webp()),
    ("video/mp4", s.mp4()),
    ("video/webm", s.webm()),
]


@pytest.mark.parametrize(("content_type", "data"), ACCEPTED, ids=[t for t, _ in ACCEPTED])
async def test_each_accepted_type_is_stored_and_served_through_its_signed_url(
    hub: Hub, content_type: str, data: bytes
) -> None:
    status, body, headers = await upload(hub, data, content_type)
    assert status == 201, body
    assert uuid.UUID(body["id"]).version == 4
    assert body["owner"] == "alice"
    assert body["content_type"] == content_type
    assert body["size"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["url"].startswith(f"/api/v1/media/{body['id']}?exp=")
    assert body["expires_at"].endswith("Z")
    assert headers["Location"] == f"/api/v1/media/{body['id']}/info"

    status, served, headers = await fetch(hub, body["url"])  # no token: the signature is the grant
    assert status == 200
    assert served == data
    assert headers["Content-Type"] == content_type
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert headers["Content-Disposition"] == "inline"
    cache, max_age = headers["Cache-Control"].split(", max-age=")
    assert cache == "private" and 3590 <= int(max_age) <= 3600
    assert headers["ETag"] == f'"{body["sha256"]}"'


async def test_gps_exif_is_gone_from_an_uploaded_jpeg_which_stays_a_valid_jpeg(hub: Hub) -> None:
    original = s.jpeg(s.segment(0xE1, s.exif_with_gps()), s.XMP, s.COMMENT)
    assert s.GPS_LATITUDE in original
    status, body, _ = await upload(hub, original, "image/jpeg")
    assert status == 201, body
    _, served, _ = await fetch(hub, body["url"])
    assert s.GPS_LATITUDE not in served and s.GPS_LONGITUDE not in served and b"Exif" not in served
    assert served == s.jpeg()  # every segment but the metadata, byte for byte
    assert s.jpeg_segments(served)[0] == s.JFIF
    assert body["size"] == len(served) and body["sha256"] == hashlib.sha256(served).hexdigest()


async def test_a_pngs_text_and_exif_chunks_are_gone_and_its_pixels_kept(hub: Hub) -> None:
    original = s.png(4, 3, s.TEXT, s.EXIF_CHUNK, s.TIME, s.GAMMA)
    status, body, _ = await upload(hub, original, "image/png")
    assert status == 201, body
    _, served, _ = await fetch(hub, body["url"])
    assert [kind for kind, _ in s.png_chunks(served)] == [b"IHDR", b"gAMA", b"IDAT", b"IEND"]
    assert s.png_decoded(served) == s.png_pixels(4, 3)


async def test_a_one_mib_image_passes_although_json_bodies_are_capped_at_64_kib(hub: Hub) -> None:
    # client_max_size (max_body_bytes, 64 KiB here) bounds request.read(); uploads stream past it.
    pixels = s.png_pixels(600, 600, noise=True)
    image = s.png(600, 600, pixels=pixels, level=0)
    assert len(image) > MiB
    status, body, _ = await upload(hub, image, "image/png")
    assert status == 201, body
    _, served, _ = await fetch(hub, body["url"])
    assert served == image and s.png_decoded(served) == pixels


async def test_an_upload_at_the_limit_passes(small_hub: Hub) -> None:
    image = s.jpeg()
    at_limit = image[:-2] + b"\0" * (50_000 - len(image)) + b"\xff\xd9"  # padding inside the scan
    assert (await upload(small_hub, at_limit, "image/jpeg"))[0] == 201
    video = s.mp4(payload=b"\0" * (80_000 - len(s.mp4(payload=b""))))
    assert (await upload(small_hub, video, "video/mp4"))[0] == 201


# -- uploads that are refused -----------------------------------------------------------------------


def assert_problem(result: tuple[int, Any, Any], status: int, code: str) -> dict[str, Any]:
    got_status, body, headers = result
    assert (got_status, body and body.get("code")) == (status, code), body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["detail"]
    return dict(body)


async def test_a_non_image_claiming_image_png_is_refused_and_nothing_is_stored(
    hub: Hub, tmp_path: Path
) -> None:
    body = assert_problem(
        await upload(hub, b"<script>alert(1)</script>" * 10, "image/png"), 415, "unsupported_media_type"
    )
    assert "image/png" in body["accepted"]
    assert stored_files(tmp_path) == []


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>", "image/svg+xml"),
        (s.mp4(b"qt  "), "video/quicktime"),
        (s.webm(b"matroska"), "video/x-matroska"),
        (s.mp4(b"heic"), "image/heic"),
    ],
)
async def test_bytes_of_a_type_not_accepted_are_unsupported(hub: Hub, data: bytes, content_type: str) -> None:
    assert_problem(await upload(hub, data, content_type), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("data", "declared", "detected"),
    [
        (s.GIF, "image/png", "image/gif"),
        (s.png(), "image/jpeg", "image/png"),
        (s.jpeg(), "application/octet-stream", "image/jpeg"),
        (s.webm(), "video/mp4", "video/webm"),
    ],
)
async def test_a_content_type_that_is_not_the_bytes_type_is_a_mismatch(
    hub: Hub, tmp_path: Path, data: bytes, declared: str, detected: str
) -> None:
    body = assert_problem(await upload(hub, data, declared), 415, "media_type_mismatch")
    assert (body["detected"], body["declared"]) == (detected, declared)
    assert stored_files(tmp_path) == []


async def test_an_empty_upload_is_refused(hub: Hub) -> None:
    assert_problem(await upload(hub, b"", "image/png"), 400, "empty_upload")


async def test_a_broken_image_is_malformed_and_nothing_is_stored(hub: Hub, tmp_path: Path) -> None:
    assert_problem(await upload(hub, s.png()[:-12], "image/png"), 422, "malformed_media")
    assert_problem(await upload(hub, s.jpeg()[:30], "image/jpeg"), 422, "malformed_media")
    assert stored_files(tmp_path) == []


async def test_an_image_over_ten_mib_is_too_large(hub: Hub, tmp_path: Path) -> None:
    image = s.png()[:-12] + b"\0" * (10 * MiB + 1 - len(s.png()) + 12)
    assert len(image) == 10 * MiB + 1
    body = assert_problem(await upload(hub, image, "image/png"), 413, "media_too_large")
    assert body["limit"] == 10 * MiB
    assert stored_files(tmp_path) == []


async def test_one_byte_over_a_types_limit_is_too_large(small_hub: Hub) -> None:
    image = s.png() + b"\0" * (50_001 - len(s.png()))
    assert (
        assert_problem(await upload(small_hub, image, "image/png"), 413, "media_too_large")["limit"] == 50_000
    )
    video = s.webm(payload=b"") + b"\0" * (80_001 - len(s.webm(payload=b"")))
    assert (
        assert_problem(await upload(small_hub, video, "video/webm"), 413, "media_too_large")["limit"]
        == 80_000
    )


async def test_an_endless_chunked_upload_is_cut_off_at_the_limit(small_hub: Hub, tmp_path: Path) -> None:
    # No Content-Length: only reading with a cap can stop it. The body never ends on its own, so an
    # answer at all proves the hub stopped reading (the safety bound only keeps a failing test finite).
    sent = 0
    safety = 4 * 1024 * MiB

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield s.PNG_SIGNATURE
        block = b"\0" * 65536
        while sent < safety:
            sent += len(block)
            yield block

    started = time.monotonic()
    result = await upload(small_hub, endless(), "image/png")
    assert_problem(result, 413, "media_too_large")
    assert sent < safety and time.monotonic() - started < 30
    assert stored_files(tmp_path) == []


async def test_a_declared_length_over_the_limit_is_refused_before_reading(small_hub: Hub) -> None:
    # The video limit is the largest: a Content-Length past it is refused whatever the body holds.
    result = await upload(small_hub, s.mp4() + b"\0" * 90_000, "video/mp4")
    assert_problem(result, 413, "media_too_large")


# -- who may upload ---------------------------------------------------------------------------------


async def test_uploading_needs_a_customer_token(hub: Hub) -> None:
    status, body, headers = await hub.call(
        "POST", "/api/v1/media", data=s.GIF, headers={"Content-Type": "image/gif"}
    )
    assert (status, body["code"]) == (401, "unauthenticated")
    assert headers["WWW-Authenticate"] == "Bearer"
    body = assert_problem(await upload(hub, s.GIF, "image/gif", who=hub.admin), 403, "forbidden")
    assert body["required"] == ["customer"]
    assert_problem(await upload(hub, s.GIF, "image/gif", who=hub.alice + "x"), 401, "invalid_token")
    assert_problem(await upload(hub, s.GIF, "image/gif", who=token("old", ttl=-60)), 401, "token_expired")


# -- signed URLs ------------------------------------------------------------------------------------


async def stored(hub: Hub, who: str | None = None) -> dict[str, Any]:
    status, body, _ = await upload(hub, s.GIF, "image/gif", who=who)
    assert status == 201, body
    return dict(body)


def fetch_problem(result: tuple[int, bytes, Any], status: int, code: str) -> None:
    import json

    got, raw, headers = result
    assert headers["Content-Type"].startswith("application/problem+json")
    assert (got, json.loads(raw)["code"]) == (status, code)


async def test_a_tampered_or_missing_signature_is_refused(hub: Hub) -> None:
    media = await stored(hub)
    other = await stored(hub)
    path, _, query = media["url"].partition("?")
    exp = query.split("&")[0].removeprefix("exp=")
    sig = query.split("sig=")[1]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    for url in [
        f"{path}?exp={exp}&sig={flipped}",
        f"{path}?exp={int(exp) + 3600}&sig={sig}",  # a later expiry under the same signature
        f"/api/v1/media/{other['id']}?{query}",  # another media under this one's signature
        f"{path}?exp={exp}",
        f"{path}?sig={sig}",
        path,
        f"{path}?exp=soon&sig={sig}",
        f"{path}?exp={exp}&sig=%C3%A9",
    ]:
        fetch_problem(await fetch(hub, url), 403, "invalid_signature")


async def test_an_expired_url_is_refused_though_its_signature_is_good(hub: Hub) -> None:
    media = await stored(hub)
    exp = int(time.time()) - 1
    fetch_problem(
        await fetch(hub, f"/api/v1/media/{media['id']}?exp={exp}&sig={sign(JWT_SECRET, media['id'], exp)}"),
        403,
        "url_expired",
    )


async def test_a_signed_url_for_unknown_media_is_not_found(hub: Hub) -> None:
    media_id, exp = str(uuid.uuid4()), int(time.time()) + 60
    fetch_problem(
        await fetch(hub, f"/api/v1/media/{media_id}?exp={exp}&sig={sign(JWT_SECRET, media_id, exp)}"),
        404,
        "media_not_found",
    )
    fetch_problem(await fetch(hub, "/api/v1/media/not-a-uuid?exp=1&sig=x"), 400, "invalid_id")


async def test_a_url_signed_with_another_secret_is_refused(hub: Hub) -> None:
    media = await stored(hub)
    exp = int(time.time()) + 60
    forged = sign("another-secret-" + "x" * 32, media["id"], exp)
    fetch_problem(
        await fetch(hub, f"/api/v1/media/{media['id']}?exp={exp}&sig={forged}"), 403, "invalid_signature"
    )


async def test_one_byte_range_and_revalidation_are_served(hub: Hub) -> None:
    data = s.mp4(payload=bytes(range(256)) * 4)
    status, media, _ = await upload(hub, data, "video/mp4")
    assert status == 201
    status, part, headers = await fetch(hub, media["url"], {"Range": "bytes=10-19"})
    assert (status, part, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    status, part, _ = await fetch(hub, media["url"], {"Range": "bytes=-5"})
    assert (status, part) == (206, data[-5:])
    status, part, _ = await fetch(hub, media["url"], {"Range": f"bytes={len(data)}-"})
    assert (status, part) == (200, data)  # not satisfiable: the whole file, as a server may answer
    status, _, headers = await fetch(hub, media["url"], {"If-None-Match": f'"{media["sha256"]}"'})
    assert status == 304 and headers["ETag"] == f'"{media["sha256"]}"'


# -- the record, for its uploader and the moderators ------------------------------------------------


async def test_the_info_is_the_uploaders_and_the_moderators_and_no_one_elses(hub: Hub) -> None:
    media = await stored(hub)
    path = f"/api/v1/media/{media['id']}/info"
    for who in (hub.alice, token("mod", "moderator"), hub.admin):
        status, body, _ = await hub.call("GET", path, token=who)
        assert status == 200, body
        assert {k: body[k] for k in ("id", "owner", "content_type", "size", "sha256")} == {
            k: media[k] for k in ("id", "owner", "content_type", "size", "sha256")
        }
        assert (await fetch(hub, body["url"]))[1] == s.GIF  # a fresh URL that works
    status, body, _ = await hub.call("GET", path, token=hub.bob)
    assert (status, body["code"]) == (404, "media_not_found")
    status, body, _ = await hub.call("GET", path)
    assert (status, body["code"]) == (401, "unauthenticated")
    status, body, _ = await hub.call("GET", f"/api/v1/media/{uuid.uuid4()}/info", token=hub.alice)
    assert (status, body["code"]) == (404, "media_not_found")


# -- what the review code calls ---------------------------------------------------------------------


async def test_owned_media_names_the_ids_that_are_not_the_owners(hub: Hub) -> None:
    mine, theirs = await stored(hub), await stored(hub, who=hub.bob)
    missing = str(uuid.uuid4())
    ids = [mine["id"], theirs["id"], missing, "not-a-uuid", mine["id"]]
    assert await owned_media(hub.app, "alice", ids) == [theirs["id"], missing, "not-a-uuid"]
    assert await owned_media(hub.app, "alice", [mine["id"]]) == []
    assert await owned_media(hub.app, "alice", []) == []


async def test_media_urls_signs_a_working_url_for_each_stored_id(hub: Hub) -> None:
    first, second = await stored(hub), await stored(hub, who=hub.bob)
    urls = await media_urls(hub.app, [first["id"], str(uuid.uuid4()), second["id"]])
    assert set(urls) == {first["id"], second["id"]}
    for url in urls.values():
        assert (await fetch(hub, url))[:2] == (200, s.GIF)


async def test_the_media_directory_holds_only_hub_made_names(hub: Hub, tmp_path: Path) -> None:
    media = await stored(hub)
    names = {p.name for p in stored_files(tmp_path)}
    assert names == {media["id"], media["id"] + ".json"}
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in stored_files(tmp_path))
