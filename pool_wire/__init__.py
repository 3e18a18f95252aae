"""What client, server and worker agree on, beneath all three::

    distribute_client/   pool_server/   worker_proc/     the three sides: none imports another
              \\              |              /
               `---------- pool_wire/ ----'             this package
                             |
                    proto/pool.proto (pool_proto/)      messages, RPCs, and the shared names

Who owns what: ``payload`` the call and outcome formats inside the opaque
payload bytes (pickle with out-of-band buffers, or JSON; versioned),
``protocol`` the line protocol between the server and a worker (sans-I/O),
``limits`` the sizes all sides enforce, ``names`` the Python mirror of the
proto's job states, worker states and error kinds (plus the error metadata
keys), and ``progress`` the hook through which ``progress()`` reaches the
worker running the call. Nothing here does I/O or starts anything.
"""
