"""TLS and mutual TLS with certificates made here, and real handshakes."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from distribute_client import Client, ServerUnavailableError

from .conftest import StartServer, wait_until


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A certificate authority of the test's own, writing PEM files under ``root``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self.cert = (
            self._builder(subject, self.key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = root / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(
        subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.root / f"{name}.pem", self.root / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "good")


def tls_args(issued: Issued) -> tuple[str, ...]:
    return ("--tls-cert", str(issued.cert), "--tls-key", str(issued.key))


def test_tls_serves_clients_that_trust_its_ca(
    start_server: StartServer, ca: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOL_TLS_CA", str(ca.path))
    server = start_server("--workers", "1", *tls_args(ca.issue("server", server=True)))
    assert server.address.startswith("grpcs://")
    assert Client(server.address).submit_json("operator:mul", [6, 7]).result(timeout=30) == 42

    stranger = Authority(tmp_path, "other")
    with pytest.raises(ServerUnavailableError):
        Client(server.address, tls_ca=stranger.path).workers()
    plain = server.address.removeprefix("grpcs://")
    with pytest.raises(ServerUnavailableError):
        Client(plain).workers()  # plaintext to a TLS port: no answer it can read


def test_mutual_tls_refuses_clients_without_a_certificate(
    start_server: StartServer, ca: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ca.issue("client", server=False)
    monkeypatch.setenv("POOL_TLS_CA", str(ca.path))
    monkeypatch.setenv("POOL_TLS_CERT", str(client.cert))
    monkeypatch.setenv("POOL_TLS_KEY", str(client.key))
    server = start_server(
        "--workers",
        "1",
        *tls_args(ca.issue("server", server=True)),
        "--tls-client-ca",
        str(ca.path),
    )
    assert len(Client(server.address).workers()) == 1
    monkeypatch.delenv("POOL_TLS_CERT")
    monkeypatch.delenv("POOL_TLS_KEY")
    with pytest.raises(ServerUnavailableError):
        Client(server.address).workers()
    impostor = Authority(tmp_path, "impostor").issue("impostor", server=False)
    with pytest.raises(ServerUnavailableError):
        Client(server.address, tls_cert=impostor.cert, tls_key=impostor.key).workers()


def test_a_renewed_certificate_is_served_without_a_restart(
    start_server: StartServer, ca: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOL_TLS_CA", str(ca.path))
    current = ca.issue("server", server=True)
    server = start_server("--workers", "1", *tls_args(current))
    renewing = Authority(tmp_path, "renewing")
    with pytest.raises(ServerUnavailableError):
        Client(server.address, tls_ca=renewing.path).workers()
    renewed = renewing.issue("renewed", server=True)
    current.key.write_bytes(renewed.key.read_bytes())  # key first: a moment of mismatch
    time.sleep(1.1)
    current.cert.write_bytes(renewed.cert.read_bytes())

    def served_renewed() -> bool:
        try:
            return bool(Client(server.address, tls_ca=renewing.path).workers())
        except ServerUnavailableError:
            return False

    wait_until(served_renewed, 15, "the renewed certificate to be served")
    assert server.proc.poll() is None
    assert "serving the new certificate" in server.log()


def test_a_key_that_does_not_match_stops_the_start(ca: Authority, tmp_path: Path) -> None:
    issued = ca.issue("server", server=True)
    other = ca.issue("other", server=True)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pool_server",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "s"),
            "--tls-cert",
            str(issued.cert),
            "--tls-key",
            str(other.key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 6
    assert "are not a certificate and its key" in out.stderr
