"""Serving HTTPS and WSS: the server's TLS context, from ``--tls-cert`` and ``--tls-key``.

TLS 1.2 at least, with the ``ssl`` module's server defaults (forward-secret AEAD suites, no
compression, no renegotiation). The files are read once, at start: a renewed certificate takes a
restart (with ``--workers``, a rolling one). A node that serves TLS tells browsers to come back over
HTTPS only (:data:`HSTS`, added by :func:`hub.browsers.security_headers` to its TLS responses).

Anything wrong with the files — missing, unreadable, not PEM, a key that is not the certificate's, one
flag without the other — is a :class:`TlsConfigError` whose message is one line, for ``synchub serve``
to stop with before it listens.
"""

from __future__ import annotations

import ssl

from hub.settings import Settings

HSTS = "max-age=63072000; includeSubDomains"  # two years, as hstspreload.org asks


class TlsConfigError(ValueError):
    """The TLS files cannot serve: the message says which and why, in one line."""


def _no_password() -> bytes:
    raise TlsConfigError("--tls-key is encrypted: give the key unencrypted (protect the file instead)")


def _readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for the certificate chain ``cert`` and its key ``key`` (PEM files)."""
    _readable("--tls-cert", cert)
    _readable("--tls-key", key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            mismatch = f"--tls-key {key} is not the key of the certificate in --tls-cert {cert}"
            raise TlsConfigError(mismatch) from None
        try:  # which file is it?
            ssl.create_default_context(cafile=cert)
        except ssl.SSLError:
            raise TlsConfigError(f"--tls-cert {cert}: not a PEM certificate ({exc.reason})") from None
        raise TlsConfigError(f"--tls-key {key}: not a PEM private key ({exc.reason})") from None
    return context


def context_for(settings: Settings) -> ssl.SSLContext | None:
    """The node's TLS context, or None when it serves plain HTTP."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        missing = "--tls-key" if settings.tls_key is None else "--tls-cert"
        raise TlsConfigError(f"--tls-cert and --tls-key go together: {missing} is missing")
    return server_context(settings.tls_cert, settings.tls_key)
