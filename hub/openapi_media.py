"""The OpenAPI paths and schema of review media: upload, signed reads, records (``hub/openapi.py``
joins them)."""

from __future__ import annotations

from typing import Any

from hub.openapi_build import AUTH_PROBLEMS, op, path_param, problems, query, reply

MEDIA_TYPES = ["image/jpeg", "image/png", "image/gif", "image/webp", "video/mp4", "video/webm"]
MEDIA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "owner": {"type": "string"},
        "content_type": {"enum": MEDIA_TYPES},
        "size": {"type": "integer", "description": "bytes stored, after metadata stripping"},
        "sha256": {"type": "string", "description": "hex SHA-256 of the bytes stored"},
        "created_at": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "description": "signed path on this hub: GET it, no token needed"},
        "expires_at": {"type": "string", "format": "date-time", "description": "when url stops working"},
    },
}


def media_paths() -> dict[str, Any]:
    media_id = path_param("media_id")
    return {
        "/api/v1/media": {
            "post": {
                **op(
                    "Upload an image or video for a review (customer role): the body is the file, its"
                    " Content-Type the type its bytes are. Images are stored without their metadata",
                    {
                        "201": {
                            **reply("Media", "stored"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        **problems(
                            **AUTH_PROBLEMS,
                            _400="empty_upload",
                            _403="forbidden: needs the customer role",
                            _413="media_too_large (limit: bytes): images 10 MiB, videos 50 MiB by default",
                            _415="unsupported_media_type (bytes of no accepted type), media_type_mismatch"
                            " (detected, declared)",
                            _422="malformed_media: an image whose structure is broken (truncated, bad CRC)",
                            _503="media_store_unavailable",
                        ),
                    },
                    auth=True,
                ),
                "requestBody": {
                    "required": True,
                    "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in MEDIA_TYPES},
                },
            },
        },
        "/api/v1/media/{media_id}": {
            "get": op(
                "The media's bytes, through the signed URL the hub gave (no token). Range: one byte range",
                {
                    "200": {"description": "the file, with its stored Content-Type"},
                    "206": {"description": "the requested byte range"},
                    "304": {"description": "not modified (ETag: the SHA-256)"},
                    **problems(
                        _400="invalid_id",
                        _403="invalid_signature (missing, malformed or not this hub's), url_expired",
                        _404="media_not_found",
                    ),
                },
                params=[
                    media_id,
                    query("exp", {"type": "integer"}, "expiry, epoch seconds, as signed"),
                    query("sig", {"type": "string"}, "the signature, as given"),
                ],
            ),
        },
        "/api/v1/media/{media_id}/info": {
            "get": op(
                "The media's record and a fresh signed URL: the uploader, moderators and admins",
                {
                    "200": reply("Media"),
                    **problems(
                        **AUTH_PROBLEMS,
                        _400="invalid_id",
                        _404="media_not_found: no such media, or another user's",
                    ),
                },
                auth=True,
                params=[media_id],
            ),
        },
    }
