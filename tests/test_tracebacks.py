"""Remote tracebacks read as local ones: the caller's frame, then the user's
frames with the markers under the expression that raised, on a real server."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from distribute_client import Client, compute_this

from .conftest import ServerProcess


def divide(x: int) -> float:
    return 1 / x


def binop(x: int) -> float:
    y = x + 1
    return divide(x) + y


def subscript(items: dict[str, int]) -> int:
    return items["missing"] + 1


def multiline(x: int) -> float:
    return divide(
        x,
    )


def attribute(x: Any) -> Any:
    value = [x]
    return value[0].nope


def chained(x: int) -> float:
    try:
        return binop(x)
    except ZeroDivisionError as e:
        raise ValueError("no zeros") from e


def _frames(error: BaseException) -> list[str]:
    """The frames as traceback prints them (source lines and markers), below
    the caller's own, and each chained exception's frames after them."""
    frames = traceback.extract_tb(error.__traceback__)[1:]
    shown = ["".join(traceback.StackSummary.from_list(frames).format())]
    cause = error.__cause__ or error.__context__
    while cause is not None:
        shown.append("".join(traceback.extract_tb(cause.__traceback__).format()))
        cause = cause.__cause__ or cause.__context__
    return shown


def _local(function: Callable[..., Any], *args: Any) -> BaseException:
    try:
        function(*args)
    except Exception as e:
        return e
    raise AssertionError("it did not raise")


CASES: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
    (binop, (0,)),
    (subscript, ({},)),
    (multiline, (0,)),
    (attribute, (1,)),
    (chained, (0,)),
]


@pytest.mark.parametrize(("function", "args"), CASES, ids=[c[0].__name__ for c in CASES])
def test_remote_traceback_is_the_local_one(
    server: ServerProcess, function: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    """compute() raises with the caller's frame, then exactly the frames and
    ^^^^/~~~ markers the same call shows when it raises here: no client or
    worker frame between, no marker out of place."""
    remote = compute_this(server.address)(function)
    with pytest.raises(Exception) as raised:
        remote(*args).compute()
    expected = _frames(_local(function, *args))
    shown = _frames(raised.value)
    assert shown == expected
    full = "".join(traceback.format_exception(raised.value))
    assert "distribute_client" not in full and "worker_proc" not in full
    first = raised.value.__traceback__
    assert first is not None and first.tb_frame.f_code.co_name.startswith("test_")


def test_every_way_of_getting_a_result_shows_only_user_frames(server: ServerProcess) -> None:
    """async_run, a job's result(), a map's iteration and a batch's results
    list show the remote frames alone, after the caller's."""
    remote = compute_this(server.address)(binop)
    expected = _frames(_local(binop, 0))

    async def run() -> None:
        await remote.async_run(0)

    errors: list[BaseException] = []
    for get in (
        lambda: asyncio.run(run()),
        lambda: remote(0).submit().result(timeout=30),
        lambda: list(remote.map([0])),
    ):
        with pytest.raises(ZeroDivisionError) as raised:
            get()
        errors.append(raised.value)
    (listed,) = remote(0).submit().results(timeout=30)
    assert isinstance(listed, ZeroDivisionError)
    for error in errors:
        # The caller's frames (asyncio.run's among them), then the remote ones.
        frames = "".join(traceback.extract_tb(error.__traceback__).format())
        assert frames.endswith(expected[0]), frames
        assert "distribute_client" not in frames
    assert "".join(traceback.extract_tb(listed.__traceback__).format()) == expected[0]


def test_a_class_only_the_server_has_comes_back_without_client_frames(
    server: ServerProcess,
) -> None:
    """A RemoteError (its class cannot be rebuilt here) carries the remote
    traceback as text, with no frames of the client in front."""
    job = Client(server.address).submit_json("json:loads", ["{nope"])
    with pytest.raises(Exception) as raised:
        job.result(timeout=30)
    (caller,) = traceback.extract_tb(raised.value.__traceback__)
    assert caller.name == "test_a_class_only_the_server_has_comes_back_without_client_frames"
    text = "".join(traceback.format_exception(raised.value))
    assert 'json/__init__.py", line ' in text and "in loads" in text
    assert "worker_proc" not in text
