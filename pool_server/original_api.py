"""The original Go server's ``RemoteExecuteAPI``, served beside ``Pool``
(``pool-server --serve-original-api``), so that its clients work unchanged.

An ``Execute`` is one of our calls: the request, wrapped behind a format tag
(``pool_wire.original``), goes through the same queue, workers, supervision,
deadlines and metrics as a ``Run``, and the worker answers in the original's
format, which goes back as it came. As in the original, what fails outside
the function (the queue, the worker, the deadline) is told in ``error``
rather than as a gRPC status: that is where its clients look.

Its clients cannot send a token, so the server serves this only with
``--auth none`` (``ServerConfig`` checks).
"""

from __future__ import annotations

import grpc

from pool_proto import challenge_pb2, challenge_pb2_grpc
from pool_server.errors import CallError
from pool_server.service import PoolService, call_budget
from pool_server.supervisor import WorkerPool
from pool_wire.original import answer_error, wrap

SERVICE_NAME = challenge_pb2.DESCRIPTOR.services_by_name["RemoteExecuteAPI"].full_name


class OriginalApi(challenge_pb2_grpc.RemoteExecuteAPIServicer):
    def __init__(self, service: PoolService, pool: WorkerPool) -> None:
        self._service = service
        self._pool = pool

    async def Execute(
        self, request: challenge_pb2.RequestExecute, context: grpc.aio.ServicerContext
    ) -> challenge_pb2.ResponseExecute:
        body = request.request  # each read of a protobuf bytes field is a copy
        if not body:
            return challenge_pb2.ResponseExecute(
                error="empty request: RequestExecute.request must carry a pickled call"
            )
        try:
            job = await self._service.run_payload(wrap(body), call_budget(context))
        except CallError as e:
            return challenge_pb2.ResponseExecute(error=str(e))
        outcome = job.outcome or b""
        error = answer_error(outcome)
        if error is not None:
            return challenge_pb2.ResponseExecute(error=error)
        return challenge_pb2.ResponseExecute(result=outcome)

    async def GetWorkers(
        self, request: challenge_pb2.RequestGetWorkers, context: grpc.aio.ServicerContext
    ) -> challenge_pb2.ResponseGetWorkers:
        """The pool's size, as the original answered its ``--workers``: for
        an autoscaled pool, the most it may grow to."""
        return challenge_pb2.ResponseGetWorkers(workers=self._pool.autoscaler.limits.max)


def add_to_server(server: grpc.aio.Server, service: PoolService, pool: WorkerPool) -> str:
    """Serve the original API on ``server``; its full service name, for reflection."""
    challenge_pb2_grpc.add_RemoteExecuteAPIServicer_to_server(OriginalApi(service, pool), server)
    return SERVICE_NAME
