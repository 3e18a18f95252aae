"""The grpc.aio floor's server: one unary method that returns its request bytes.

Run as ``python -m bench.suite.systems.grpc_echo_server [--pipe]``; prints
``port N`` once serving on 127.0.0.1 and serves until SIGTERM. No protobuf,
no queue, no worker: what is left is gRPC's own cost, the floor under any gRPC
pool. With ``--pipe`` each request first makes one round trip, as a hex
line, through a Python child's stdin and stdout: the least any design that
runs calls in worker processes behind gRPC pays (``bench.profile_server``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import uvloop

SERVICE, METHOD = "bench.Echo", "Echo"
MESSAGE_OPTIONS = (
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 1 << 30),
)
# As pool-server does (pool_server/app.py): without it gRPC core cancels a burst
# of more than about 1,000 calls that arrive faster than asyncio accepts them.
SERVER_OPTIONS = (
    *MESSAGE_OPTIONS,
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
)


CHILD = "import sys\nfor line in sys.stdin.buffer:\n    sys.stdout.buffer.write(line)\n"
CHILD += "    sys.stdout.flush()\n"


async def echo(request: bytes, context: Any) -> bytes:
    return request


def pipe_echo(child: asyncio.subprocess.Process) -> Callable[[bytes, Any], Awaitable[bytes]]:
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout, lock = child.stdin, child.stdout, asyncio.Lock()

    async def relay(request: bytes, context: Any) -> bytes:
        async with lock:
            stdin.write(request.hex().encode() + b"\n")
            await stdin.drain()
            line = await stdout.readline()
        return bytes.fromhex(line.decode())

    return relay


async def serve(pipe: bool) -> None:
    method: Callable[[bytes, Any], Awaitable[bytes]] = echo
    if pipe:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        method = pipe_echo(child)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(method)  # no (de)serializers: raw bytes
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    uvloop.run(serve("--pipe" in sys.argv[1:]))
    sys.exit(0)
