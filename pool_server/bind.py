"""Listening on the gRPC port, and saying in one line why not.

gRPC's core reports a failed bind on stderr itself (an ``add_port.cc``
line, then a ``RuntimeError`` that points at ``GRPC_VERBOSITY``), which
tells an operator nothing they can act on (issue 15). The bind runs with
file descriptor 2 caught, and what gRPC wrote there becomes the reason in
:class:`BindError`: "port 50051 is in use; pick another with --port".
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

import grpc

from pool_server.config import ServerConfig
from pool_server.tls import server_credentials

_IN_USE = "Address already in use"


class BindError(Exception):
    """The server could not listen on its address; the message says why."""


def listen(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Add the configured port to ``server``; the port bound (``--port 0``
    picks one). :class:`BindError` if it cannot be had."""
    caught: list[str] = []
    try:
        with _stderr_caught(caught):
            if config.tls is None:
                return int(server.add_insecure_port(config.address))
            return int(server.add_secure_port(config.address, server_credentials(config.tls)))
    except RuntimeError as e:
        said = caught[0] if caught else ""
        if _IN_USE in said:
            raise BindError(f"port {config.port} is in use; pick another with --port") from None
        raise BindError(f"cannot listen on {config.address}: {_reason(said) or e}") from None


def _reason(said: str) -> str:
    """gRPC's own words, without its log prefix: the part after ``] ``."""
    lines = [line for line in said.splitlines() if line.strip()]
    return lines[-1].split("] ", 1)[-1] if lines else ""


@contextlib.contextmanager
def _stderr_caught(caught: list[str]) -> Iterator[None]:
    """Whatever is written to fd 2 meanwhile, kept in ``caught`` instead."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            caught.append(capture.read().decode(errors="replace"))
