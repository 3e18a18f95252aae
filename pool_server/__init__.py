"""pool-server: the daemon that runs clients' calls on a pool of workers.

The path of one call through the server::

    gRPC Run ──> service.PoolService._run ──> Job ──> JobQueue (bounded; put waits
       ^                                                   │     when full)
       │                                                   v
       │        supervisor: one consumer per worker slot, takes a job when idle
       │                                                   │
       │        process.WorkerProcess: "JOB id b64" line ──> worker stdin
       └── RunReply <── JobResult <── "RESULT id b64" line <── worker stdout

Submitted (durable) jobs take the same path from the queue on; ``Submit``
journals them first, and they are answered by ``GetResult``/``WatchJob``
instead of the RPC that created them.

Who owns what: ``config`` the settings, ``cli`` the command line, ``app``
start-up, signals and shutdown, ``service`` gRPC and the mapping of
``errors`` to statuses, ``queue`` the bounded job queue, ``jobs`` the job
record and its life (the supervisor and tracker tell a job what happened;
it decides what follows), ``events`` the listeners that hear of every job's
and worker's changes, ``tracker`` durable jobs (submit, lookup, recovery,
expiry), ``journal`` their SQLite journal and ``journal_writer`` the one
thread that does its I/O (the event loop never waits on the disk),
``supervisor`` the worker slots' state machine, restarts and backoff,
``process`` the I/O with one worker process. Payloads are opaque bytes
here: the server never unpickles them, and imports neither the client nor
the worker (it starts workers by module name).
"""

import os

# The server forks only to exec workers, so grpc's fork handlers have nothing
# to protect; left on, they log a warning for every worker (re)start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
