"""What a client proves to a server: its token, and for TLS its CA and certificate.

Each setting is taken from the first place that has it: the argument
(``token=``, ``tls_ca=``, ``tls_cert=``, ``tls_key=``), then the environment
(``POOL_TOKEN``, then the first line of ``POOL_TOKEN_FILE``; ``POOL_TLS_CA``,
``POOL_TLS_CERT``, ``POOL_TLS_KEY``), then for the token the file a server
with the default state dir makes for itself, so the same user on the same
machine needs no configuration at all.

The token travels as ``authorization: Bearer <token>`` metadata, added to
every call by a channel interceptor (call credentials would do it too, but
grpcio refuses them on a plaintext channel, and a token on loopback needs
no TLS). It is never part of a repr or a message.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pool_wire.tokens import (
    AUTH_METADATA_KEY,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TokenFileError,
    bearer,
    default_token_file,
    parse_tokens,
)

TLS_CA_ENV = "POOL_TLS_CA"
TLS_CERT_ENV = "POOL_TLS_CERT"
TLS_KEY_ENV = "POOL_TLS_KEY"


@dataclass(frozen=True)
class Credentials:
    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def resolve(
        cls,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> Credentials:
        """The arguments, each filled in from the environment when not given."""
        cert = _path(tls_cert, TLS_CERT_ENV)
        key = _path(tls_key, TLS_KEY_ENV)
        if (cert is None) != (key is None):
            raise ValueError(
                f"a client certificate needs both tls_cert and tls_key "
                f"(or ${TLS_CERT_ENV} and ${TLS_KEY_ENV})"
            )
        return cls(token or _token_from_environment(), _path(tls_ca, TLS_CA_ENV), cert, key)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTH_METADATA_KEY, bearer(self.token)),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For ``grpcs://``: the CA to trust (system roots if none), and our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca),
            private_key=_read(self.tls_key),
            certificate_chain=_read(self.tls_cert),
        )


def _path(value: str | os.PathLike[str] | None, variable: str) -> Path | None:
    value = value or os.environ.get(variable)
    return Path(value) if value else None


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


def _token_from_environment() -> str | None:
    if token := os.environ.get(TOKEN_ENV):
        return token
    if named := os.environ.get(TOKEN_FILE_ENV):
        path = Path(named)
        try:
            return _first_token(path, path.stat().st_mtime_ns)
        except OSError as e:
            raise ValueError(
                f"${TOKEN_FILE_ENV} is {named!r}, which cannot be read: {e.strerror}"
            ) from None
    path = default_token_file()
    try:
        return _first_token(path, path.stat().st_mtime_ns)
    except OSError:  # no server of this user here: call without a token
        return None


@functools.lru_cache(maxsize=16)
def _first_token(path: Path, mtime_ns: int) -> str | None:
    """The first token in ``path`` (cached until the file changes)."""
    try:
        tokens = parse_tokens(path.read_text(), str(path))
    except TokenFileError as e:
        raise ValueError(str(e)) from None
    return tokens[0].secret if tokens else None


def token_interceptors(credentials: Credentials) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the ``authorization`` metadata to every call on a
    channel: one per kind of RPC, as grpc.aio files each under one kind only."""
    metadata = credentials.metadata()
    return [_UnaryUnaryToken(metadata), _UnaryStreamToken(metadata), _StreamStreamToken(metadata)]


class _TokenMetadata:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))


class _UnaryUnaryToken(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> AsyncIterator[Any] | Any:
        return await continuation(self._with_token(details), request)


class _StreamStreamToken(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        requests: Any,
    ) -> AsyncIterator[Any] | Any:
        return await continuation(self._with_token(details), requests)
