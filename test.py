#!/usr/bin/env python3
"""Smoke test of a running pool-server, as the original challenge's ``test.py``.

Usage::

    ./test.py [HOST:PORT]       # default: $POOL_SERVER, else 127.0.0.1:50051

Runs a few remote calls (a value, kwargs and a closure, concurrent
``async_run`` calls, a remote exception) and checks what comes back. Prints
``success`` and exits 0 if every check passes; otherwise prints one line per
failed check and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from distribute_client import RemoteFunction, ServerUnavailableError, compute_this

# Generous: a check that takes this long has failed anyway.
CALL_TIMEOUT_S = 30.0
CONCURRENT_CALLS = 8


def square(x: int) -> int:
    return x * x


def make_affine(offset: int) -> Callable[..., int]:
    def affine(x: int, *, scale: int = 1) -> int:
        return x * scale + offset  # `offset` travels in the closure

    return affine


class SmokeTestError(Exception):
    """Defined in this script only: the worker gets the class by value."""


def fail(message: str, custom: bool = False) -> None:
    raise (SmokeTestError if custom else ValueError)(message)


async def gather_squares(remote_square: RemoteFunction[[int], int], n: int) -> list[int]:
    return list(await asyncio.gather(*(remote_square.async_run(i) for i in range(n))))


def raised(remote_fail: RemoteFunction[..., None], message: str, custom: bool) -> object:
    """What the remote call raised, as (type, message)."""
    try:
        remote_fail(message, custom=custom).compute()
    except ServerUnavailableError:
        raise
    except Exception as e:
        return type(e), str(e)
    return "nothing raised"


def run_checks(server: str | None) -> list[str]:
    """Run every check; return one line per failure."""
    remote = compute_this(server, timeout=CALL_TIMEOUT_S)
    remote_square, affine, remote_fail = remote(square), remote(make_affine(10)), remote(fail)
    checks: list[tuple[str, Callable[[], Any], object]] = [
        ("square(7).compute()", lambda: remote_square(7).compute(), 49),
        (
            "affine(3, scale=2) with offset=10 in its closure",
            lambda: affine(3, scale=2).compute(),
            16,
        ),
        (
            f"{CONCURRENT_CALLS} concurrent square.async_run() via asyncio.gather",
            lambda: asyncio.run(gather_squares(remote_square, CONCURRENT_CALLS)),
            [i * i for i in range(CONCURRENT_CALLS)],
        ),
        (
            "a remote ValueError comes back as ValueError",
            lambda: raised(remote_fail, "bad value 42", custom=False),
            (ValueError, "bad value 42"),
        ),
        (
            "a remote exception of a class defined here comes back as that class",
            lambda: raised(remote_fail, "custom 7", custom=True),
            (SmokeTestError, "custom 7"),
        ),
    ]
    failures = []
    for name, check, expected in checks:
        try:
            got = check()
        except ServerUnavailableError:
            raise
        except Exception as e:
            failures.append(f"FAILED {name}: raised {type(e).__name__}: {e}")
            continue
        if got != expected:
            failures.append(f"FAILED {name}: got {got!r}, expected {expected!r}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "server", nargs="?", help="HOST:PORT (default: $POOL_SERVER, else 127.0.0.1:50051)"
    )
    args = parser.parse_args()
    try:
        failures = run_checks(args.server)
    except (ServerUnavailableError, ValueError) as e:  # ValueError: a malformed address
        print(f"FAILED: {e}")
        return 1
    for line in failures:
        print(line)
    if failures:
        return 1
    print("success")
    return 0


if __name__ == "__main__":
    sys.exit(main())
