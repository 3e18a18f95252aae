"""The original Go server's calls, carried in our payloads.

The original (github.com/anight/mysticchallenge) has clients send
``RequestExecute.request``: a pickle of ``(marshal.dumps(func.__code__),
depmodules, args, kwargs)``, and expects ``ResponseExecute.result``: a pickle
of ``(return value, stdout, stderr, exception)``. The server never unpickles
either. It puts the request behind :data:`TAG` and queues it like any
payload; the worker (``worker_proc.original``) sees the tag, decodes the
request and answers in the original's format, which goes back untouched.

What fails outside the function (a request that will not decode, a return
value that will not pickle) has no place in that tuple: the worker answers
it as text behind :data:`ERROR_TAG`, which the server, still without
unpickling, puts in ``ResponseExecute.error``.
"""

from __future__ import annotations

TAG = b"\x89ORG"  # like b"\x89PLD": not ASCII, so never taken for JSON
ERROR_TAG = b"\x89ERR"  # a pickle starts with b"\x80", so never taken for a result


def wrap(request: bytes) -> bytes:
    """The payload that carries one ``RequestExecute.request``."""
    return TAG + request


def is_original(payload: bytes | bytearray | memoryview) -> bool:
    return bytes(payload[: len(TAG)]) == TAG


def unwrap(payload: bytes | memoryview) -> memoryview:
    """The original request inside a payload :func:`is_original` accepts."""
    return memoryview(payload)[len(TAG) :]


def error_answer(message: str) -> bytes:
    """A worker's answer saying why a call could not be run or answered."""
    return ERROR_TAG + message.encode()


def answer_error(outcome: bytes) -> str | None:
    """The message of an :func:`error_answer`; None for a result."""
    if not outcome.startswith(ERROR_TAG):
        return None
    return outcome[len(ERROR_TAG) :].decode(errors="replace")
