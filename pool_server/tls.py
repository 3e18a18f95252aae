"""TLS for the server: its certificate, reloaded when renewed, and optional mTLS.

grpcio asks the fetcher for a new configuration on every handshake
(``dynamic_ssl_server_credentials``); the fetcher looks at the files'
modification times, at most once a second, and reads them again only when
one changed, so a renewed certificate is served without a restart while
connections already open keep theirs. A renewal that cannot be read (a key
that does not match, a file half written) keeps the current certificate and
is logged.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("pool_server.tls")

CHECK_INTERVAL_S = 1.0


class TlsSetupError(Exception):
    """The certificate, key or client CA cannot be read; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate it signed

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that serve ``files`` and pick up their renewals."""
    watcher = _CertificateWatcher(files)
    return grpc.dynamic_ssl_server_credentials(
        watcher.configuration(),
        watcher.renewed,
        require_client_authentication=files.client_ca is not None,
    )


class _CertificateWatcher:
    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamps = self._mtimes()

    def _mtimes(self) -> tuple[int, ...]:
        try:
            return tuple(path.stat().st_mtime_ns for path in self._files.paths())
        except OSError as e:
            raise TlsSetupError(f"cannot read {e.filename}: {e.strerror}") from None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        files = self._files
        try:
            cert, key = files.cert.read_bytes(), files.key.read_bytes()
            client_ca = files.client_ca.read_bytes() if files.client_ca else None
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
        except ssl.SSLError as e:  # before OSError, its base class
            raise TlsSetupError(
                f"{files.cert} and {files.key} are not a certificate and its key: {e.reason}"
            ) from None
        except OSError as e:
            raise TlsSetupError(f"cannot read {e.filename}: {e.strerror}") from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def renewed(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if a file changed since the last look, else None."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < CHECK_INTERVAL_S:
                return None
            self._checked = now
            try:
                stamps = self._mtimes()
                if stamps == self._stamps:
                    return None
                configuration = self.configuration()
            except TlsSetupError as e:
                log.error("kept the current TLS certificate: %s", e)
                return None
            self._stamps = stamps
            log.info("TLS certificate files changed: serving the new certificate")
            return configuration
