"""The worker process: runs calls for ``pool-server``, one at a time.

The server starts ``python -m worker_proc --arena-fd N`` with pipes on fds
0, 1 and 2 and its shared-memory arena on fd N::

    server                      worker (this package)
    ------                      ---------------------
              <- READY pid v    handshake (pool_wire.protocol)
    FUNCTION key b64 ->         into the function cache, for jobs that name it
    JOB id b64 ->               runner.run_checked(): import depmodules,
    (JOBREF id off len ->       unpickle (from the arena, in place), call
     payload in the arena)      with stdout/stderr captured
              <- PROGRESS id f b64   any number, from progress() (reporting.py)
              <- RETIRING id b64     only if the call left the worker unfit
              <- RESULT id ok b64    pickled CallOutcome (pool_wire.payload),
              (<- RESULTREF id ok off len   or, when large, in the arena)

Who owns what: ``runner`` running one call, ``reporting`` throttled
progress reports, ``__main__`` the process itself (private protocol
descriptors, dying with the server, the read-run-write loop, the check
after each call that asks for a replacement). The line format and the
payload formats are ``pool_wire``'s, shared with the server and the client.
This package never talks gRPC and imports neither of them.
"""
