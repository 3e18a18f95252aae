"""The gRPC ``Pool`` service: the one place where calls become jobs and
server errors become gRPC statuses."""

from __future__ import annotations

import asyncio

import grpc

from pool_proto import pool_pb2, pool_pb2_grpc
from pool_server.errors import CallError, DeadlineExceeded, InvalidCall
from pool_server.jobs import Job, JobResult
from pool_server.supervisor import WorkerPool
from worker_proc.protocol import MAX_PAYLOAD_BYTES

# The server gives up this much before the client's deadline, so that its
# reply (which says whether the call was queued or running) reaches the
# client before the client's own deadline fires with a bare status.
DEADLINE_MARGIN_S = 0.05


class PoolService(pool_pb2_grpc.PoolServicer):
    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self.calls_answered = 0
        self.calls_failed = 0

    async def Run(
        self, request: pool_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.RunReply:
        try:
            result = await self._run(request.payload, context.time_remaining())
        except CallError as e:
            self.calls_failed += 1
            context.set_trailing_metadata(e.metadata())
            await context.abort(e.code, str(e))
        self.calls_answered += 1
        return pool_pb2.RunReply(
            outcome=result.outcome,
            worker_id=result.worker_id,
            worker_pid=result.worker_pid,
        )

    async def GetWorkers(
        self, request: pool_pb2.GetWorkersRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.GetWorkersReply:
        return pool_pb2.GetWorkersReply(
            workers=[
                pool_pb2.WorkerInfo(
                    id=w.id,
                    pid=w.pid,
                    state=w.state.value,
                    jobs_done=w.jobs_done,
                    restarts=w.restarts,
                )
                for w in self._pool.workers
            ],
            queue_length=len(self._pool.queue),
            queue_capacity=self._pool.queue.maxsize,
        )

    async def _run(self, payload: bytes, time_remaining: float | None) -> JobResult:
        if not payload:
            raise InvalidCall("empty payload: a Run request must carry a pickled call")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidCall(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
        job = Job(payload)
        queued = False
        budget = None if time_remaining is None else max(time_remaining - DEADLINE_MARGIN_S, 0)
        try:
            async with asyncio.timeout(budget):
                await self._pool.submit(job)
                queued = True
                return await job.result
        except TimeoutError:
            raise DeadlineExceeded(self._deadline_message(job, queued, time_remaining)) from None
        finally:
            self._pool.abandon(job)

    def _deadline_message(self, job: Job, queued: bool, seconds: float | None) -> str:
        if not queued:
            return (
                f"the call's {seconds:.3g} s deadline passed while the job queue was full "
                f"({self._pool.queue.maxsize} waiting); retry later, or start the server "
                "with more --workers or a larger --queue-size"
            )
        if job.worker_id is None:
            return f"the call waited in the queue for its whole {seconds:.3g} s deadline"
        return (
            f"the call ran past its {seconds:.3g} s deadline on worker {job.worker_id}; "
            "the worker was stopped and replaced"
        )
