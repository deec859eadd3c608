"""``synchub serve --tls-cert --tls-key``: HTTPS and WSS from real hub processes, with a self-signed
certificate made here; HSTS over TLS only; plain HTTP refused on a TLS port; a one-line exit when the
files cannot serve; and the flags handed to ``--workers``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.tls import HSTS, TlsConfigError, server_context
from tests.cluster_helpers import free_port
from tests.conftest import Hub, redis_url, token
from tests.test_workers import hub_env

ADMIN = {"Authorization": f"Bearer {token('root', 'admin')}"}


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_pem(directory: Path, name: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key: (cert file, key file)."""
    key = key or _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "synchub test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def client_context(cert_file: Path) -> ssl.SSLContext:
    """A client that trusts this certificate only (as its CA) and checks the host name."""
    return ssl.create_default_context(cafile=str(cert_file))


async def serve(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        "serve",
        *args,
        "--log-level",
        "WARNING",
        env={**hub_env(), "SYNCHUB_RATE_LIMITS": "off"},
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_ready(proc: asyncio.subprocess.Process, url: str, ssl_context: ssl.SSLContext) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"the hub exited with {proc.returncode}: {err.decode()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/readyz", ssl=ssl_context) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError("the hub did not become ready over HTTPS")


@contextlib.asynccontextmanager
async def tls_hub(tmp_path: Path, *args: str) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    cert_file, key_file = write_pem(tmp_path, "hub")
    port = free_port()
    proc = await serve(
        tmp_path, "--port", str(port), "--tls-cert", str(cert_file), "--tls-key", str(key_file), *args
    )
    try:
        context = client_context(cert_file)
        await wait_ready(proc, f"https://127.0.0.1:{port}", context)
        yield port, context
    finally:
        await stop(proc)


async def test_a_hub_with_a_certificate_serves_https_and_wss_and_nothing_in_plain_http(tmp_path):
    database = str(tmp_path / "hub.sqlite3")
    async with (
        tls_hub(tmp_path, "--database-url", database, "--region", "eu") as (port, context),
        aiohttp.ClientSession() as session,
    ):
        base = f"https://127.0.0.1:{port}"
        async with session.get(base + "/healthz", ssl=context) as response:
            assert response.status == 200
            assert (
                response.headers["Strict-Transport-Security"] == HSTS == "max-age=63072000; includeSubDomains"
            )
        # TLS 1.3, and 1.2 for a client that goes no further.
        for newest, expected in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
            context.maximum_version = newest
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            assert writer.get_extra_info("ssl_object").version() == expected
            writer.close()
        context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
        # Also by name, and errors get it too.
        async with session.get(f"https://localhost:{port}/api/v1/products/nope", ssl=context) as response:
            assert response.status in (400, 404)
            assert response.headers["Strict-Transport-Security"] == HSTS

        # A client that does not trust the certificate is refused by its own check.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(base + "/healthz", ssl=ssl.create_default_context()):
                pass
        # Plain HTTP on the TLS port gets no HTTP answer.
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                await response.read()

        # WSS: a subscription, and a change made over HTTPS arrives on it.
        async with session.post(
            base + "/api/v1/warehouses",
            json={"id": "par-1", "region": "eu", "name": "Paris"},
            headers=ADMIN,
            ssl=context,
        ) as response:
            assert response.status == 201, await response.text()
        async with session.post(
            base + "/api/v1/products",
            json={"sku": "TLS-1", "name": "tls", "price": "1.00"},
            headers=ADMIN,
            ssl=context,
        ) as response:
            assert response.status == 201, await response.text()
            product_id = (await response.json())["id"]
        async with session.ws_connect(
            f"wss://127.0.0.1:{port}/api/v1/ws", protocols=("synchub.json",), ssl=context
        ) as ws:
            await ws.send_str(
                orjson.dumps({"type": "subscribe", "id": 1, "channel": "inventory:eu"}).decode()
            )
            reply = orjson.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            assert reply["type"] == "subscribed", reply
            async with session.put(
                f"{base}/api/v1/products/{product_id}/inventory/par-1",
                json={"on_hand": 7},
                headers=ADMIN,
                ssl=context,
            ) as response:
                assert response.status == 200, await response.text()
            event = orjson.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            assert event["type"] == "event", event
            assert event["data"]["product_id"] == product_id and event["data"]["on_hand"] == 7

        # SSE over TLS: the stream's head and its first bytes.
        async with session.get(base + "/api/v1/sse?channels=inventory:eu", ssl=context) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert await asyncio.wait_for(response.content.readany(), 10)


async def test_plain_http_responses_carry_no_hsts(hub: Hub):
    status, _, headers = await hub.call("GET", "/healthz")
    assert status == 200 and "Strict-Transport-Security" not in headers


async def test_the_server_context_refuses_anything_older_than_tls_1_2(tmp_path):
    cert_file, key_file = write_pem(tmp_path, "hub")
    context = server_context(str(cert_file), str(key_file))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.protocol is ssl.PROTOCOL_TLS_SERVER


def _broken_pairs(tmp_path: Path) -> list[tuple[list[str], str]]:
    cert_file, key_file = write_pem(tmp_path, "good")
    _, other_key = write_pem(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        _key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    missing = tmp_path / "missing.crt"
    return [
        (["--tls-cert", str(missing), "--tls-key", str(key_file)], f"--tls-cert {missing}: cannot read it"),
        (["--tls-cert", str(cert_file), "--tls-key", str(tmp_path)], f"--tls-key {tmp_path}: cannot read it"),
        (
            ["--tls-cert", str(cert_file), "--tls-key", str(other_key)],
            f"--tls-key {other_key} is not the key of the certificate in --tls-cert {cert_file}",
        ),
        (
            ["--tls-cert", str(garbage), "--tls-key", str(key_file)],
            f"--tls-cert {garbage}: not a PEM certificate",
        ),
        (
            ["--tls-cert", str(cert_file), "--tls-key", str(garbage)],
            f"--tls-key {garbage}: not a PEM private key",
        ),
        (["--tls-cert", str(cert_file), "--tls-key", str(encrypted)], "--tls-key is encrypted"),
        (["--tls-cert", str(cert_file)], "--tls-cert and --tls-key go together: --tls-key is missing"),
        (["--tls-key", str(key_file)], "--tls-cert and --tls-key go together: --tls-cert is missing"),
    ]


async def test_files_that_cannot_serve_stop_the_hub_with_one_line(tmp_path):
    database = str(tmp_path / "hub.sqlite3")
    for args, expected in _broken_pairs(tmp_path):
        proc = await serve(tmp_path, "--port", str(free_port()), "--database-url", database, *args)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            await stop(proc)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 1, (args, lines)
        assert len(lines) == 1 and lines[0].startswith(f"synchub: {expected}"), (args, lines)


def test_the_context_names_the_file_at_fault(tmp_path):
    for args, expected in _broken_pairs(tmp_path)[:6]:
        with pytest.raises(TlsConfigError) as raised:
            server_context(args[1], args[3])
        assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
async def test_workers_serve_tls_with_the_supervisors_files(tmp_path, pg, redis_prefix):
    async with (
        tls_hub(
            tmp_path,
            "--workers",
            "2",
            "--database-url",
            pg,
            "--redis-url",
            redis_url(),
            "--redis-prefix",
            redis_prefix,
        ) as (port, context),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
    ):
        nodes = set()
        deadline = time.monotonic() + 20
        # New connections, which the kernel spreads over the workers listening (the second may start later).
        while len(nodes) < 2 and time.monotonic() < deadline:
            async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=context) as response:
                assert response.status == 200
                assert response.headers["Strict-Transport-Security"] == HSTS
                nodes.add((await response.json())["node_id"])
        assert len(nodes) == 2, nodes
