"""Real uvicorn on loopback: HTTPS with a CA made here, client certificates, header deadline."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.transport import HttpTransport, RetryPolicy, tls_context
from server.app import create_app
from server.serving import uvicorn_config
from shared import routes
from shared.errors import ConfigError, Unavailable
from tests.api.conftest import Initialised

pytestmark = pytest.mark.anyio


@dataclass
class Pem:
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    directory: Path,
    stem: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
    server: bool = False,
) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = _name(stem)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    pem = Pem(directory / f"{stem}.crt", directory / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.key.chmod(0o600)
    return pem, cert, key


@dataclass
class Pki:
    ca: Pem
    server: Pem
    site: Pem
    other_ca: Pem
    self_signed: Pem


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca, ca_cert, ca_key = _issue(directory, "ca", issuer=None, ca=True)
    server, _, _ = _issue(directory, "server", issuer=(ca_cert, ca_key), ca=False, server=True)
    site, _, _ = _issue(directory, "site", issuer=(ca_cert, ca_key), ca=False)
    other_ca, _, _ = _issue(directory, "other-ca", issuer=None, ca=True)
    self_signed, _, _ = _issue(directory, "pinned", issuer=None, ca=False, server=True)
    return Pki(ca, server, site, other_ca, self_signed)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def served(initialised: Initialised, **overrides: Any) -> AsyncIterator[int]:
    """The app under real uvicorn on a loopback port, with ``fedseg server serve``'s config."""
    settings = initialised.settings.model_copy(update={"port": _free_port(), **overrides})
    settings.check()
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        yield settings.port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def _health(url: str, verify: ssl.SSLContext | bool) -> httpx.Response:
    async with httpx.AsyncClient(verify=verify, timeout=5) as client:
        return await client.get(url + routes.HEALTHZ)


async def test_https_with_a_ca_and_with_a_pinned_certificate(
    initialised: Initialised, pki: Pki
) -> None:
    async with served(initialised, tls_cert=pki.server.cert, tls_key=pki.server.key) as port:
        url = f"https://127.0.0.1:{port}"
        trusted = tls_context(ca_file=pki.ca.cert)
        assert (await _health(url, trusted)).status_code == 200
        with pytest.raises(httpx.ConnectError):
            await _health(url, tls_context(ca_file=pki.other_ca.cert))
        with pytest.raises(httpx.ConnectError):
            await _health(url, True)  # the system store does not know our CA
        with pytest.raises(httpx.HTTPError):
            await _health(f"http://127.0.0.1:{port}", True)  # no plain HTTP on the TLS port

        # the site's transport, as `fedseg client --ca-file` builds it
        def site_health() -> None:
            with HttpTransport(url, verify=trusted, retry=RetryPolicy(attempts=1)) as transport:
                transport.health()

        await asyncio.to_thread(site_health)

    pinned = pki.self_signed
    async with served(initialised, tls_cert=pinned.cert, tls_key=pinned.key) as port:
        url = f"https://127.0.0.1:{port}"
        assert (await _health(url, tls_context(ca_file=pinned.cert))).status_code == 200
        with pytest.raises(httpx.ConnectError):
            await _health(url, tls_context(ca_file=pki.server.cert))


async def test_client_certificates_when_the_server_asks(initialised: Initialised, pki: Pki) -> None:
    async with served(
        initialised, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca.cert
    ) as port:
        url = f"https://127.0.0.1:{port}"
        with_cert = tls_context(ca_file=pki.ca.cert, cert_file=pki.site.cert, key_file=pki.site.key)
        assert (await _health(url, with_cert)).status_code == 200
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await _health(url, tls_context(ca_file=pki.ca.cert))
        stranger = _issue(pki.ca.cert.parent, "stranger", issuer=None, ca=False)[0]
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await _health(
                url,
                tls_context(ca_file=pki.ca.cert, cert_file=stranger.cert, key_file=stranger.key),
            )

        def unreachable() -> None:
            plain = tls_context(ca_file=pki.ca.cert)
            with HttpTransport(url, verify=plain, retry=RetryPolicy(attempts=1)) as transport:
                transport.health()

        with pytest.raises(Unavailable):
            await asyncio.to_thread(unreachable)


async def test_optional_client_certificates(initialised: Initialised, pki: Pki) -> None:
    async with served(
        initialised,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert,
        tls_client_cert_required=False,
    ) as port:
        url = f"https://127.0.0.1:{port}"
        assert (await _health(url, tls_context(ca_file=pki.ca.cert))).status_code == 200
        stranger = _issue(pki.ca.cert.parent, "stranger", issuer=None, ca=False)[0]
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await _health(
                url,
                tls_context(ca_file=pki.ca.cert, cert_file=stranger.cert, key_file=stranger.key),
            )


def test_serve_refuses_half_a_tls_configuration(initialised: Initialised, pki: Pki) -> None:
    from typer.testing import CliRunner

    from fedseg.cli import app

    data_dir = str(initialised.settings.data_dir)
    result = CliRunner().invoke(
        app, ["server", "serve", "--data-dir", data_dir, "--tls-cert", str(pki.server.cert)]
    )
    assert result.exit_code == 1
    assert "--tls-key" in result.output


def test_tls_settings_refuse_half_configurations(initialised: Initialised, pki: Pki) -> None:
    settings = initialised.settings
    for overrides in (
        {"tls_cert": pki.server.cert},
        {"tls_client_ca": pki.ca.cert},
        {"tls_cert": pki.server.cert, "tls_key": pki.server.key.with_name("missing.key")},
    ):
        with pytest.raises(ConfigError):
            settings.model_copy(update=overrides).check()
    pki.server.key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        settings.model_copy(update={"tls_cert": pki.server.cert, "tls_key": pki.server.key}).check()
    with pytest.raises(ConfigError, match="cannot load"):
        tls_context(ca_file=pki.ca.cert.with_name("nope.pem"))


async def test_a_connection_that_sends_no_headers_is_closed(initialised: Initialised) -> None:
    async with served(initialised, header_timeout_s=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()

        # a complete request is answered, and the kept-alive connection gets a new deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        remaining = await asyncio.wait_for(reader.read(), 5)
        assert b"HTTP/1.1 200" not in remaining  # the second, incomplete request was not served
        writer.close()


async def test_oversized_headers_are_refused(initialised: Initialised) -> None:
    """h11 buffers at most max_header_bytes of an incomplete request line and headers."""
    async with served(initialised, max_header_bytes=4096) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
        writer.close()
