"""distribute_client: run Python functions on a pool-server's workers.

    from distribute_client import compute_this

    @compute_this()                 # server from $POOL_SERVER or 127.0.0.1:50051
    def square(x):
        return x * x

    square(3).compute()             # 9, blocking
    await square.async_run(3)       # 9, from asyncio code
    job = square(3).submit()        # a durable job: job.status(), job.result()
    list(square.map(range(10)))     # many jobs, results in order

The path of one call through this package::

    square(3) ──> RemoteFunction.__call__: bind arguments (TypeError here) ──> Call
    Call.compute() ──> _sync.run_sync ─┐  (a private loop thread)
    Call.async_run() ──────────────────┴─> _codec.encode_call (cloudpickle)
        ──> _transport.run (gRPC Run; errors mapped to errors.PoolError)
        ──> _codec.decode_outcome: replay stdout/stderr, return the value or
            re-raise the remote exception with its remote traceback

Who owns what, each module importing only those below it::

    _remote     the decorator and calls
    _batch      map
    _client     questions about the server and its jobs; JSON jobs
    _results    a batch's results, in input order, from any process
    _completed  as_completed: jobs in the order they finish
    _submit     submitting jobs (one Submit RPC), for all of the above
    _jobs       handles on submitted jobs
    _codec      pickling          _sync      blocking over async
    _transport  channels, one typed function per RPC, error translation
    errors      the exception tree, and which error kind of the server is which
    _progress   progress reports (beside the rest)

``cli`` is ``pool-client``, built on the public names below alone.
"""

from distribute_client._batch import AsyncMap as AsyncMap
from distribute_client._batch import Map as Map
from distribute_client._client import Client as Client
from distribute_client._client import PoolStatus as PoolStatus
from distribute_client._client import WorkerInfo as WorkerInfo
from distribute_client._completed import as_completed as as_completed
from distribute_client._completed import async_as_completed as async_as_completed
from distribute_client._jobs import BatchStatus as BatchStatus
from distribute_client._jobs import Job as Job
from distribute_client._jobs import JobStatus as JobStatus
from distribute_client._progress import progress as progress
from distribute_client._remote import Call as Call
from distribute_client._remote import RemoteFunction as RemoteFunction
from distribute_client._remote import compute_this as compute_this
from distribute_client._results import Batch as Batch
from distribute_client.errors import AuthenticationError as AuthenticationError
from distribute_client.errors import CallTimeoutError as CallTimeoutError
from distribute_client.errors import InvalidRequestError as InvalidRequestError
from distribute_client.errors import JobCancelledError as JobCancelledError
from distribute_client.errors import JobInterruptedError as JobInterruptedError
from distribute_client.errors import JobNotFoundError as JobNotFoundError
from distribute_client.errors import JobTimedOutError as JobTimedOutError
from distribute_client.errors import JournalUnavailableError as JournalUnavailableError
from distribute_client.errors import PoolError as PoolError
from distribute_client.errors import ProtocolError as ProtocolError
from distribute_client.errors import QueueFullError as QueueFullError
from distribute_client.errors import RemoteError as RemoteError
from distribute_client.errors import SerializationError as SerializationError
from distribute_client.errors import ServerError as ServerError
from distribute_client.errors import ServerShuttingDownError as ServerShuttingDownError
from distribute_client.errors import ServerUnavailableError as ServerUnavailableError
from distribute_client.errors import WorkerCrashedError as WorkerCrashedError
from pool_wire.refs import Ref as Ref

__all__ = [
    "AsyncMap",
    "AuthenticationError",
    "Batch",
    "BatchStatus",
    "Call",
    "CallTimeoutError",
    "Client",
    "InvalidRequestError",
    "Job",
    "JobCancelledError",
    "JobInterruptedError",
    "JobNotFoundError",
    "JobStatus",
    "JobTimedOutError",
    "JournalUnavailableError",
    "Map",
    "PoolError",
    "PoolStatus",
    "ProtocolError",
    "QueueFullError",
    "RemoteError",
    "RemoteFunction",
    "SerializationError",
    "ServerError",
    "ServerShuttingDownError",
    "ServerUnavailableError",
    "WorkerCrashedError",
    "WorkerInfo",
    "as_completed",
    "async_as_completed",
    "compute_this",
    "progress",
]
