"""pool-server: the daemon that runs clients' calls on a pool of workers.

The path of one call through the server::

    gRPC Calls stream (or Run, RunChunked) ──> service.PoolService._run ──> Job
       ^                     ──> JobQueue (bounded in jobs and bytes; put waits when full)
       │                                                   │
       │        supervisor: one consumer per worker slot, takes a job when idle
       │                                                   │
       │        process.WorkerProcess: "FUNCTION key b64" line (if the worker
       │        lacks it), then "JOB id b64" (or "JOBREF id off len", the
       │        payload in the worker's shared-memory arena) ──> worker stdin
       └── CallEvent <── outcome <── "RESULT id status b64" (or "RESULTREF") <── worker stdout

Submitted (durable) jobs take the same path from the queue on; ``Submit``
journals them first, and they are answered by ``GetResult``/``WatchJob``
instead of the RPC that created them.

Who owns what: ``config`` the settings, ``cli`` the command line, ``app``
start-up, signals and shutdown, ``auth`` tokens and who is calling, ``tls``
certificates, ``state_dir`` the private state dir, ``service`` gRPC and the
mapping of ``errors`` to statuses, ``call_stream`` one client's Calls
stream, ``functions`` the pickled functions clients send once, ``queue`` the
bounded job queue, ``jobs`` the job record and its life (the supervisor and
tracker tell a job what happened; it decides what follows), ``events`` the
listeners that hear of every job's and worker's changes, ``tracker`` durable
jobs (submit, lookup, recovery, expiry), ``journal`` their SQLite journal
and ``journal_writer`` the one thread that does its I/O (the event loop
never waits on the disk), ``supervisor`` the worker slots' state machine,
restarts and backoff, ``process`` the I/O with one worker process,
``cgroup`` the slots' cgroups (so stopping a slot stops all it started).
Payloads are opaque bytes here: the server never unpickles them, and imports
neither the client nor the worker (it starts workers by module name).
"""

import os

# The server forks only to exec workers, so grpc's fork handlers have nothing
# to protect; left on, they log a warning for every worker (re)start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
