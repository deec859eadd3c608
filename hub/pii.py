"""Personal data encrypted at rest: AES-GCM (``cryptography``'s AESGCM) with named keys.

A ciphertext is text, ``pii1:{kid}:{base64url(nonce ‖ ciphertext ‖ tag)}``: the format's version, the
id of the key it was made with, a fresh 96-bit nonce per encryption. The associated data is
``synchub pii v1``, the user's subject and the field's name, so a ciphertext decrypts only as that
user's that field: one copied into another user's row, or into another field, fails like a tampered
one.

Keys come from ``--pii-keys`` / ``SYNCHUB_PII_KEYS``: ``kid:base64key,kid:base64key,…`` (16, 24 or
32 bytes each: AES-128/192/256), the **first is current** — every write encrypts with it — and the
others still decrypt what was written under them. Rotation: put a new key first and keep the old ones;
each profile is rewritten under the new key on its next write (the row's ``key_id`` says which rows
are still under an old one); drop an old key once no row names it. Without the flag, ``synchub
serve`` makes a key file in the data directory (``var/pii-keys``, beside the default database: the
keys go with the data they decrypt), and an
app built from :class:`~hub.settings.Settings` with no keys makes one for its process only.

Errors (:class:`PiiError`) say what is wrong, never what the data is: ``pii_key_unknown`` (the
ciphertext names a key this hub was not given) and ``pii_undecryptable`` (the key is there but the
data does not authenticate under it: the wrong key bytes under that id, or data changed or moved).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "pii1"
_KID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_AD_LABEL = b"synchub pii v1"
_NONCE_BYTES = 12


class PiiError(Exception):
    code = "pii_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PiiKeyUnknown(PiiError):
    code = "pii_key_unknown"


class PiiUndecryptable(PiiError):
    code = "pii_undecryptable"


def _decode_key(kid: str, text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"PII key {kid!r} is not base64") from exc
    if len(key) not in (16, 24, 32):
        raise ValueError(f"PII key {kid!r} is {len(key)} bytes: an AES key is 16, 24 or 32 bytes")
    return key


def _associated_data(sub: str, field_name: str) -> bytes:
    # Lengths first: no two (sub, field) pairs give the same bytes.
    parts = [sub.encode(), field_name.encode()]
    return _AD_LABEL + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass(frozen=True)
class Keyring:
    """The hub's PII keys by id; ``current`` encrypts."""

    current: str
    keys: Mapping[str, bytes]
    _ciphers: dict[str, AESGCM] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the current PII key {self.current!r} is not among the keys")
        for kid, key in self.keys.items():
            self._ciphers[kid] = AESGCM(key)

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring(current={self.current!r}, kids={sorted(self.keys)!r})"

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """``kid:base64key,…``, the first current; ValueError naming what is wrong (never a key)."""
        keys: dict[str, bytes] = {}
        first: str | None = None
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            kid, sep, text = item.partition(":")
            if not sep or not _KID.fullmatch(kid):
                raise ValueError(
                    "PII keys are 'kid:base64key' separated by commas (kid: 1-32 of A-Za-z0-9._-)"
                )
            if kid in keys:
                raise ValueError(f"PII key id {kid!r} is given twice")
            keys[kid] = _decode_key(kid, text.strip())
            first = first or kid
        if first is None:
            raise ValueError("no PII key given")
        return cls(first, keys)

    @staticmethod
    def kid_of(ciphertext: str) -> str:
        version, _, rest = ciphertext.partition(":")
        kid = rest.partition(":")[0]
        if version != FORMAT or not _KID.fullmatch(kid):
            raise PiiUndecryptable(f"the stored value is not a {FORMAT} ciphertext")
        return kid

    def encrypt(self, sub: str, field_name: str, plaintext: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(
            nonce, plaintext.encode(), _associated_data(sub, field_name)
        )
        return f"{FORMAT}:{self.current}:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"

    def decrypt(self, sub: str, field_name: str, ciphertext: str) -> str:
        kid = self.kid_of(ciphertext)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise PiiKeyUnknown(
                f"the {field_name} was encrypted with PII key {kid!r}, which this hub was not given"
                " (--pii-keys: keep old keys after the current one until no data is under them)"
            )
        body = ciphertext.split(":", 2)[2]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(raw) < _NONCE_BYTES + 16:
                raise ValueError("too short")
            plain = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated_data(sub, field_name))
            return plain.decode()
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise PiiUndecryptable(
                f"the {field_name} does not decrypt under PII key {kid!r}: the key's bytes differ from the"
                " ones it was written with, or the stored data was changed or belongs to another user"
            ) from exc


def new_key_spec(kid: str | None = None) -> str:
    """A fresh ``kid:base64key`` (AES-256)."""
    kid = kid or f"k{secrets.token_hex(4)}"
    return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"


def dev_pii_keys(data_dir: Path) -> str:
    """A per-checkout key file (``{data_dir}/pii-keys``), made on first use: the newcomer's default.
    Production passes --pii-keys / SYNCHUB_PII_KEYS."""
    path = data_dir / "pii-keys"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    spec = new_key_spec()
    # Written whole under another name, then linked into place: a process that finds the file finds it
    # complete, and of two processes making it at once the second reads the first's.
    draft = data_dir / f".pii-keys.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(spec + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        draft.unlink(missing_ok=True)
    return spec


def keyring_for(pii_keys: str) -> Keyring:
    """The keyring of the ``pii_keys`` setting; with none, one key for this process only (an app built
    without the CLI, as tests and benchmarks do: what it encrypts is unreadable after it stops)."""
    return Keyring.parse(pii_keys or new_key_spec("process"))
