"""Floors for ``bench.profile_server``: ``python -m bench._echo_server echo|pipe``.

A grpc.aio server whose Run echoes the payload (``echo``), or relays it
through one pipe round trip to a Python child first (``pipe``): the least any
design that runs calls in worker processes behind gRPC pays. Prints its port.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop

from pool_proto import pool_pb2, pool_pb2_grpc

CHILD = "import sys\nfor line in sys.stdin.buffer:\n    sys.stdout.buffer.write(line)\n"
CHILD += "    sys.stdout.flush()\n"


class Echo(pool_pb2_grpc.PoolServicer):  # type: ignore[misc]
    def __init__(self, child: asyncio.subprocess.Process | None) -> None:
        self._child = child
        self._lock = asyncio.Lock()

    async def Run(
        self, request: pool_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.RunReply:
        if self._child is None:
            return pool_pb2.RunReply(outcome=request.payload)
        assert self._child.stdin is not None and self._child.stdout is not None
        async with self._lock:
            self._child.stdin.write(request.payload.hex().encode() + b"\n")
            await self._child.stdin.drain()
            line = await self._child.stdout.readline()
        return pool_pb2.RunReply(outcome=bytes.fromhex(line.decode()))


async def serve(kind: str) -> None:
    child = None
    if kind == "pipe":
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
    server = grpc.aio.server()
    pool_pb2_grpc.add_PoolServicer_to_server(Echo(child), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
