"""Sizes every side enforces alike: the client before sending, the server on
receipt, the worker before answering."""

from __future__ import annotations

# The largest call payload (and the largest outcome) one call may carry. The
# limit exists so that a runaway client cannot make the server buffer without
# bound; 1 GiB leaves room for 100 MB+ arrays while staying well inside gRPC's
# 2 GiB message ceiling.
MAX_PAYLOAD_BYTES = 1 << 30

# Payloads (arguments and outcomes) larger than this travel between the
# server and a worker through the worker's shared-memory arena, not as
# base64 lines (issue 10): base64 costs 4/3 of the payload in the pipe and a
# pass of encoding and decoding on each side, which dominates above about a
# megabyte; below it a line is cheaper than the bookkeeping.
ARENA_THRESHOLD_BYTES = 1 << 20

# The largest gRPC message either side accepts: a payload plus room for the
# protobuf envelope around it.
MAX_MESSAGE_BYTES = MAX_PAYLOAD_BYTES + 1024 * 1024

# The pieces a large payload or outcome travels in over RunChunked: small
# enough that a piece in flight costs little memory, large enough that the
# per-message cost is lost in the copying.
CHUNK_BYTES = 1024 * 1024

# gRPC channel/server options that let a payload of MAX_PAYLOAD_BYTES through.
GRPC_MESSAGE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

# Lengths of the strings a request names things by. Ids are made by the
# server (20 characters) but a client may send anything; names and batch ids
# come from people. Every one is stored with each job, journaled, and
# answered in every listing, so each is bounded: a megabyte name on 64
# payloads once grew the journal by 388 MB and one ListJobs reply to 128 MB.
MAX_ID_CHARS = 256  # a job id, as sent in a JobRef
MAX_BATCH_ID_CHARS = 256
MAX_NAME_CHARS = 1024
# A progress message is kept with its job and listed like a name; a longer
# one is cut (the function's own report, so cutting it refuses nobody).
MAX_PROGRESS_MESSAGE_CHARS = 1024
# A failed job's exception as text ("Type: message") is kept and listed the
# same way; the whole exception stays in its outcome.
MAX_ERROR_SUMMARY_CHARS = 1024

# Further attempts a call may ask for. Each retry after a crash costs a worker
# restart; 100 is more than any flaky function needs, and keeps max_attempts
# (a uint32 on the wire) far from overflowing.
MAX_RETRIES = 100

# Calls one submitted job may carry (a map chunk carries many): it fits an
# int32 in any language, and a batch's totals (uint64) cannot overflow.
MAX_ITEMS_PER_JOB = (1 << 31) - 1

# The longest time limit a job may set: a year; longer is a mistake, and
# far longer ones (1e300) do not fit the event loop's timers.
MAX_TIME_LIMIT_S = 365 * 24 * 3600.0

# The most jobs one ListJobs answers; a larger limit is clamped to it, so
# that one reply stays a few megabytes whatever was asked.
MAX_LIST_LIMIT = 10_000

# How much of a string from a request an error message quotes: enough to
# recognise it, never so much that the message (which travels in a header)
# outgrows gRPC's metadata limit.
ECHO_CHARS = 64


def brief(text: str) -> str:
    """``text`` quoted for an error message: its first ECHO_CHARS characters."""
    if len(text) <= ECHO_CHARS:
        return repr(text)
    return f"{text[:ECHO_CHARS]!r}… ({len(text)} characters)"
