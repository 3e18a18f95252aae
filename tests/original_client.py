"""A client of the original Go server's RemoteExecuteAPI, written here from
its public contract (github.com/anight/mysticchallenge): stubs generated from
a copy of its proto (tests/original_proto/challenge.proto) and its encoding
rebuilt, so that tests call our server exactly as the original's clients do,
without its package.

The stubs are generated when first needed, into a directory of their own:
their messages must not meet the server's copy (pool_proto.challenge_pb2)
in one process, and this process never imports that one.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import marshal
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_tools import protoc
from tblib import pickling_support

pickling_support.install()

PROTO_DIR = Path(__file__).parent / "original_proto"


class MethodReturnedError(Exception):
    """The server answered with ``ResponseExecute.error``, as the original's client raises."""


def _stubs() -> tuple[ModuleType, ModuleType]:
    """challenge_pb2 and challenge_pb2_grpc, generated once per process."""
    if "challenge_pb2_grpc" not in sys.modules:
        out = tempfile.mkdtemp(prefix="original-stubs-")
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        code = protoc.main(
            [
                "protoc",
                f"-I{PROTO_DIR}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(PROTO_DIR / "challenge.proto"),
            ]
        )
        assert code == 0, f"protoc failed with {code}"
        sys.path.insert(0, out)
    return importlib.import_module("challenge_pb2"), importlib.import_module("challenge_pb2_grpc")


def request_serialize(
    func: Callable[..., Any], depmodules: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """As the original's encode.py: the code marshalled, the rest pickled."""
    return pickle.dumps((marshal.dumps(func.__code__), depmodules, args, kwargs))


def response_deserialize(binary: bytes) -> tuple[Any, str, str, BaseException | None]:
    ret, stdout, stderr, exception = pickle.loads(binary)
    return ret, stdout, stderr, exception


class OriginalClient:
    """``execute`` answers (value, stdout, stderr, exception) or raises
    :class:`MethodReturnedError`; ``run`` behaves as the original's
    ``RemoteFunctionCall.run``: it prints the output and raises the exception."""

    def __init__(self, address: str) -> None:
        self.pb2, grpc_module = _stubs()
        self._channel = grpc.insecure_channel(address)
        self._stub = grpc_module.RemoteExecuteAPIStub(self._channel)
        self._aio_address = address
        self._grpc_module = grpc_module

    def close(self) -> None:
        self._channel.close()

    def get_workers(self) -> int:
        return int(self._stub.GetWorkers(self.pb2.RequestGetWorkers(), timeout=10).workers)

    def execute_raw(self, request: bytes, timeout: float | None = 60.0) -> Any:
        """The ResponseExecute of one request, as bytes on the wire."""
        return self._stub.Execute(self.pb2.RequestExecute(request=request), timeout=timeout)

    def execute(
        self,
        func: Callable[..., Any],
        *args: Any,
        depmodules: tuple[str, ...] = (),
        timeout: float | None = 60.0,
        **kwargs: Any,
    ) -> tuple[Any, str, str, BaseException | None]:
        request = request_serialize(func, list(depmodules), args, kwargs)
        return _decoded(self.execute_raw(request, timeout))

    def run(self, func: Callable[..., Any], *args: Any, depmodules: tuple[str, ...] = ()) -> Any:
        value, stdout, stderr, exception = self.execute(func, *args, depmodules=depmodules)
        print(stdout, end="")
        print(stderr, end="", file=sys.stderr)
        if exception is not None:
            raise exception
        return value

    async def gather(
        self, func: Callable[..., Any], calls: list[tuple[Any, ...]], depmodules: tuple[str, ...]
    ) -> list[Any]:
        """Many calls at once over one grpc.aio channel, as the original's
        test_load.py makes them (``asyncio.gather`` of ``async_run``)."""
        async with grpc.aio.insecure_channel(self._aio_address) as channel:
            stub = self._grpc_module.RemoteExecuteAPIStub(channel)

            async def one(args: tuple[Any, ...]) -> Any:
                request = request_serialize(func, list(depmodules), args, {})
                response = await stub.Execute(self.pb2.RequestExecute(request=request))
                value, _, _, exception = _decoded(response)
                if exception is not None:
                    raise exception
                return value

            return await asyncio.gather(*(one(args) for args in calls))


def _decoded(response: Any) -> tuple[Any, str, str, BaseException | None]:
    if response.error != "":
        raise MethodReturnedError(f"Execute() method failed: {response.error}")
    return response_deserialize(response.result)
