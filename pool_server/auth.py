"""Who may call: bearer tokens checked on every RPC, and who each caller is.

The server takes its tokens from the first of ``$POOL_TOKEN``, the token
file (``--token-file`` or ``$POOL_TOKEN_FILE``), and ``<state-dir>/token``,
which it creates on first start (an admin token, mode 0600). A file is read
again on SIGHUP, so a token is rotated by adding a line, signalling, and
later removing the old line (``pool-server token --rotate`` adds one).

:class:`Authenticator` is a server interceptor: it answers a call without a
token ``UNAUTHENTICATED`` and one with a token it does not accept
``PERMISSION_DENIED``, before any handler runs, and tells the handler who is
calling through :func:`current_caller` (the interceptor and the handler share
one ``contextvars.Context``, as grpc.aio documents). The health service
answers everyone, so load balancers and probes need no token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import os
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from pool_wire.tokens import (
    AUTH_METADATA_KEY,
    DEFAULT_NAME,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    Token,
    TokenFileError,
    generate_token,
    parse_tokens,
    secret_from_header,
)

log = logging.getLogger("pool_server.auth")

HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"

_WHERE_CLIENTS_LOOK = (
    "the client takes its token from token= (pool-client --token-file), then $POOL_TOKEN, "
    "then $POOL_TOKEN_FILE, then the token file in the default state dir "
    "(~/.local/state/pool-server/token); on the server's machine `pool-server token` prints it"
)


class AuthSetupError(Exception):
    """The server's tokens cannot be found, made or trusted; says how to fix it."""


@dataclass(frozen=True)
class Caller:
    """Who a call comes from: the name of its token, and whether it sees every job."""

    name: str
    admin: bool

    def may_see(self, owner: str) -> bool:
        """Whether this caller may read or cancel a job submitted by ``owner``."""
        return self.admin or owner == self.name


# With --auth none nobody can be told apart, so every caller sees every job.
UNAUTHENTICATED_CALLER = Caller(DEFAULT_NAME, admin=True)

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("pool_server_caller")


def current_caller() -> Caller:
    """The caller of the RPC being handled (set by :class:`Authenticator`)."""
    return _caller.get()


class TokenStore:
    """The tokens this server accepts, reloadable from their file."""

    def __init__(self, tokens: Sequence[Token], path: Path | None) -> None:
        self._tokens = list(tokens)
        self.path = path

    def __repr__(self) -> str:
        return f"<TokenStore {len(self._tokens)} tokens from {self.source}>"

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else f"${TOKEN_ENV}"

    @classmethod
    def load(cls, token_file: Path | None, state_dir: Path) -> TokenStore:
        """The tokens from the first source that has any (see the module docstring)."""
        from_env = os.environ.get(TOKEN_ENV)
        if from_env:
            return cls(_parse(from_env, f"${TOKEN_ENV}"), None)
        named = token_file or _env_path(TOKEN_FILE_ENV)
        path = named or state_dir / "token"
        if named is None:
            ensure_token_file(path)
        return cls(read_token_file(path), path)

    def reload(self) -> None:
        """Read the token file again; keep the current tokens if it cannot be read."""
        if self.path is None:
            log.info("SIGHUP: tokens come from $%s, nothing to reload", TOKEN_ENV)
            return
        try:
            tokens = read_token_file(self.path)
        except AuthSetupError as e:
            log.error("SIGHUP: kept the %d current tokens: %s", len(self._tokens), e)
            return
        self._tokens = tokens
        log.info("SIGHUP: reloaded %d tokens from %s", len(tokens), self.path)

    def caller(self, secret: str) -> Caller | None:
        """Whose token ``secret`` is; None if it is none of them."""
        found = None
        encoded = secret.encode()
        for token in self._tokens:  # every one compared, in constant time
            if hmac.compare_digest(encoded, token.secret.encode()) and found is None:
                found = Caller(token.name, token.admin)
        return found


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def _parse(text: str, source: str) -> list[Token]:
    try:
        tokens = parse_tokens(text, source)
    except TokenFileError as e:
        raise AuthSetupError(str(e)) from None
    if not tokens:
        raise AuthSetupError(f"{source} holds no token; `pool-server token` makes one")
    return tokens


def read_token_file(path: Path) -> list[Token]:
    """The tokens in ``path``, refused if others could change or read them."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise AuthSetupError(f"cannot read the token file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthSetupError(
            f"token file {path} can be read or changed by other users "
            f"(mode {stat.filemode(mode)}); run `chmod 600 {path}`"
        )
    return _parse(text, str(path))


def ensure_token_file(path: Path) -> bool:
    """Create ``path`` with one new admin token unless it exists; True if created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise AuthSetupError(f"cannot create the token file {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(Token(generate_token(), DEFAULT_NAME, admin=True).line() + "\n")
    log.info("created token file %s; `pool-server token` prints its token", path)
    return True


def rotate_token_file(path: Path) -> Token:
    """Add a new token as the first line, with the name and flags of the current first."""
    current = read_token_file(path)[0]
    new = Token(generate_token(), current.name, current.admin)
    old_text = path.read_text()
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new.line() + "\n" + old_text)
    temporary.replace(path)
    return new


class Authenticator(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without an accepted token; records who made the others."""

    def __init__(self, tokens: TokenStore | None) -> None:
        self._tokens = tokens  # None: --auth none

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._tokens is None:
            _caller.set(UNAUTHENTICATED_CALLER)
            return await continuation(details)
        if details.method.startswith(HEALTH_SERVICE_PREFIX):
            return await continuation(details)
        header = _header(details.invocation_metadata)
        secret = secret_from_header(header) if header is not None else None
        if secret is None:
            refusal = (
                grpc.StatusCode.UNAUTHENTICATED,
                f"this pool-server requires a token ('{AUTH_METADATA_KEY}: Bearer <token>' "
                f"metadata); {_WHERE_CLIENTS_LOOK}",
            )
        else:
            caller = self._tokens.caller(secret)
            if caller is not None:
                _caller.set(caller)
                return await continuation(details)
            refusal = (
                grpc.StatusCode.PERMISSION_DENIED,
                "this pool-server does not accept the token sent (it may have been rotated); "
                + _WHERE_CLIENTS_LOOK,
            )
        handler = await continuation(details)
        return _refusing(handler, *refusal) if handler is not None else None


def _header(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTH_METADATA_KEY:
            return value if isinstance(value, str) else None
    return None


def _refusing(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers ``code`` at once."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(
        requests: AsyncIterator[object], context: grpc.aio.ServicerContext
    ) -> None:
        # Refused before its first message was read, a stream the client
        # was writing to reached it as "INTERNAL: Internal error from Core"
        # about one time in three, instead of this code: read it first.
        with contextlib.suppress(Exception):
            await anext(aiter(requests), None)
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def reload_on_sighup(tokens: TokenStore) -> None:
    """Reload ``tokens`` from their file on SIGHUP, off the event loop."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Future[None]] = set()

    def on_sighup() -> None:
        future = asyncio.ensure_future(asyncio.to_thread(tokens.reload))
        reloads.add(future)
        future.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
