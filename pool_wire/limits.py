"""Sizes every side enforces alike: the client before sending, the server on
receipt, the worker before answering."""

from __future__ import annotations

# The largest call payload (and the largest outcome) one call may carry. The
# limit exists so that a runaway client cannot make the server buffer without
# bound; 1 GiB leaves room for 100 MB+ arrays while staying well inside gRPC's
# 2 GiB message ceiling.
MAX_PAYLOAD_BYTES = 1 << 30

# The largest gRPC message either side accepts: a payload plus room for the
# protobuf envelope around it.
MAX_MESSAGE_BYTES = MAX_PAYLOAD_BYTES + 1024 * 1024

# gRPC channel/server options that let a payload of MAX_PAYLOAD_BYTES through.
GRPC_MESSAGE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
