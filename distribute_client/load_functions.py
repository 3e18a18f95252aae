"""The functions ``pool-client load --function`` runs on the workers.

They live in a module of their own, installed with the client and the
server alike, so an installed server imports them by reference.
"""

from __future__ import annotations

import time


def noop() -> None:
    """``--function noop``: the cost of a call alone."""


def sleep(milliseconds: float) -> None:
    """``--function sleep:MS``: hold a worker for MS milliseconds."""
    time.sleep(milliseconds / 1000)


def payload(data: bytes) -> int:
    """``--function payload:BYTES``: carry BYTES bytes there, their length back."""
    return len(data)
