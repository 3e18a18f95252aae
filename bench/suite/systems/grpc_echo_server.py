"""The grpc.aio floor's server: one unary method that returns its request bytes.

Run as ``python -m bench.suite.systems.grpc_echo_server``; prints ``port N``
once serving on 127.0.0.1 and serves until SIGTERM. No protobuf, no queue, no
worker: what is left is gRPC's own cost, the floor under any gRPC pool.
"""

from __future__ import annotations

import asyncio
import signal
import sys
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


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def serve() -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(echo)  # no (de)serializers: raw bytes
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
    uvloop.run(serve())
    sys.exit(0)
