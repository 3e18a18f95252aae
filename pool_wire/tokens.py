"""Bearer tokens: where they live, how a token file reads, how one travels.

A token file holds one token per line, newest first; the server accepts
every line, a client sends the first. A line is ``token``, ``name:token`` or
``name:token:admin``: the name is whose jobs a token's calls see (``default``
when unnamed), and ``admin`` sees everyone's. Blank lines and ``#`` comments
are skipped. Token text never appears in a message, a log line or a repr:
errors name the file and the line number instead.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "POOL_TOKEN"
TOKEN_FILE_ENV = "POOL_TOKEN_FILE"
STATE_DIR_ENV = "XDG_STATE_HOME"

# The gRPC metadata key (lower case, as HTTP/2 requires) and its scheme.
AUTH_METADATA_KEY = "authorization"
BEARER = "Bearer "

DEFAULT_NAME = "default"
ADMIN_FLAG = "admin"

# Long enough for any generated token, short enough that a header cannot
# carry a megabyte into every comparison.
MAX_TOKEN_CHARS = 256


def state_root() -> Path:
    """$XDG_STATE_HOME/pool-server, else ~/.local/state/pool-server: the
    token file every server of this user with no --state-dir shares, and
    each one's own state dir below it (:func:`port_state_dir`)."""
    base = os.environ.get(STATE_DIR_ENV) or Path.home() / ".local" / "state"
    return Path(base) / "pool-server"


def port_state_dir(port: int) -> Path:
    """The journal's dir of a server on ``port`` with no --state-dir:
    ``<state root>/port-50051``, so servers on other ports keep their jobs
    apart (a listing shows only its own server's)."""
    return state_root() / f"port-{port}"


def default_token_file() -> Path:
    """The token file the servers of this user with no --state-dir share,
    and that its clients send, whatever port they talk to."""
    return state_root() / "token"


def generate_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Token:
    """One accepted token; its secret is left out of ``repr``."""

    secret: str = field(repr=False)
    name: str = DEFAULT_NAME
    admin: bool = False

    def line(self) -> str:
        """The token as a line of a token file."""
        return f"{self.name}:{self.secret}" + (f":{ADMIN_FLAG}" if self.admin else "")


class TokenFileError(ValueError):
    """A token file or variable that cannot be read as tokens."""


def parse_tokens(text: str, source: str) -> list[Token]:
    """Every token in ``text`` (the contents of ``source``), newest first."""
    tokens = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens.append(_parse_line(line, f"{source}, line {number}"))
    return tokens


def _parse_line(line: str, where: str) -> Token:
    parts = line.split(":")
    if len(parts) == 1:
        name, secret, flags = DEFAULT_NAME, parts[0], []
    else:
        name, secret, flags = parts[0], parts[1], parts[2:]
    if not name or not secret:
        raise TokenFileError(f"{where}: expected token, name:token or name:token:admin")
    if flags not in ([], [ADMIN_FLAG]):
        raise TokenFileError(f"{where}: the only flag after name:token is ':{ADMIN_FLAG}'")
    if len(secret) > MAX_TOKEN_CHARS or not secret.isprintable() or " " in secret:
        raise TokenFileError(
            f"{where}: a token is up to {MAX_TOKEN_CHARS} printable characters without spaces"
        )
    return Token(secret, name, admin=bool(flags))


def bearer(secret: str) -> str:
    """The ``authorization`` metadata value for ``secret``."""
    return BEARER + secret


def secret_from_header(value: str) -> str | None:
    """The token in an ``authorization`` value; None if it is not a bearer token."""
    if not value.startswith(BEARER):
        return None
    return value[len(BEARER) :].strip() or None
