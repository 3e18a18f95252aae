"""Floor: a bare round trip through a pipe to one subprocess, and back.

The arguments are pickled, written as a length-prefixed frame and echoed; the
function is never run. This is the least any process pool pays per call (two
pipe hops and a pickle each way), with no network stack in between.
"""

from __future__ import annotations

import pickle
import platform
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from bench.suite.adapter import Kind, Unsupported
from bench.suite.systems.pipe_echo_child import HEADER
from bench.suite.workloads import identity

STOP_TIMEOUT_S = 10.0


def read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the echo child closed its pipe")
    return data


class PipeEchoFloor:
    name = "pipe echo (floor)"
    kind: Kind = "floor"
    call_how = "write one frame, read it back"
    many_how = "all frames written from a thread while the replies are read (pipelined)"
    batch_how: str | None = None
    bulk_how: str | None = None

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        return f"os pipes, CPython {platform.python_version()}"

    def start(self, workers: int) -> None:
        command = [sys.executable, "-m", "bench.suite.systems.pipe_echo_child"]
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def stop(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _pipes(self, fn: Callable[..., Any]) -> tuple[IO[bytes], IO[bytes]]:
        if fn is not identity:
            raise Unsupported("a transport floor only echoes")
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        return self._proc.stdin, self._proc.stdout

    @staticmethod
    def _write(sink: IO[bytes], args: tuple[Any, ...]) -> None:
        body = pickle.dumps(args, protocol=5)
        sink.write(HEADER.pack(len(body)))
        sink.write(body)

    @staticmethod
    def _read(source: IO[bytes]) -> Any:
        (size,) = HEADER.unpack(read_exactly(source, HEADER.size))
        return pickle.loads(read_exactly(source, size))[0]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        sink, source = self._pipes(fn)
        self._write(sink, args)
        sink.flush()
        return self._read(source)

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        sink, source = self._pipes(fn)

        def write_all() -> None:
            for args in argslist:
                self._write(sink, args)
            sink.flush()

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        values = [self._read(source) for _ in argslist]
        writer.join()
        return values

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        raise Unsupported("no batch path")

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        raise Unsupported("no batch path")

    def server_rss_mib(self) -> float | None:
        return None
