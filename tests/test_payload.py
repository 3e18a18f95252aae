"""The pickled payload format: versioned, big fields out of band, read back as views."""

from __future__ import annotations

import copy
import os
import pickle
import struct

import cloudpickle
import grpc
import pytest

from distribute_client import SerializationError
from distribute_client._codec import decode_outcome
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.payload import (
    FORMAT_VERSION,
    OUT_OF_BAND_BYTES,
    BatchOutcome,
    CallOutcome,
    CallRequest,
    OutcomeStatus,
    dumps,
    loads_outcome,
    loads_request,
)

from .conftest import AUTH_METADATA, ServerProcess

BIG = os.urandom(OUT_OF_BAND_BYTES + 1)


def outcome(value: bytes) -> CallOutcome:
    return CallOutcome(OutcomeStatus.RETURNED, value, None, "printed\n", "", 1.5, 0.25)


@pytest.mark.parametrize("value", [b"", b"small", BIG])
def test_outcome_round_trip(value: bytes) -> None:
    assert loads_outcome(dumps(outcome(value))) == outcome(value)


def test_big_fields_travel_out_of_band_and_come_back_as_views() -> None:
    """The payload holds each big field once, and reading it copies nothing."""
    files = (("job", "/src/job.py"),)
    request = CallRequest(b"function", BIG, ("numpy",), ("builtins.OSError",), files)
    data = dumps(request)
    assert len(data) < len(BIG) + 512
    back = loads_request(data)
    assert isinstance(back, CallRequest)
    assert isinstance(back.arguments, memoryview) and back.arguments == BIG
    assert (back.function, back.depmodules, back.source_files) == (b"function", ("numpy",), files)


def test_batch_outcomes_keep_order() -> None:
    batch = BatchOutcome([outcome(BIG), outcome(b"1"), outcome(BIG[::-1])])
    back = loads_outcome(dumps(batch))
    assert isinstance(back, BatchOutcome)
    assert [bytes(o.value) for o in back.outcomes] == [BIG, b"1", BIG[::-1]]


def test_a_full_batch_of_big_values() -> None:
    """A chunk of f.map holds up to 256 calls: each may return a big value."""
    values = [i.to_bytes(2, "big") + BIG for i in range(300)]
    back = loads_outcome(dumps(BatchOutcome([outcome(v) for v in values])))
    assert isinstance(back, BatchOutcome)
    assert [bytes(o.value) for o in back.outcomes] == values


@pytest.mark.parametrize("cut", [1, 9, len(BIG) // 2])
def test_truncated_payload_is_an_error(cut: int) -> None:
    data = dumps(outcome(BIG))
    with pytest.raises((ValueError, struct.error, pickle.UnpicklingError)):
        loads_outcome(data[:-cut])


def test_messages_copy_and_pickle_as_plain_objects_too() -> None:
    """Out-of-band buffers only where the protocol has them: copy, deepcopy and
    pickle protocol 4 still work, and so do fields read back as views."""
    message = outcome(BIG)
    assert copy.copy(message) == message
    assert copy.deepcopy(message) == message
    assert pickle.loads(pickle.dumps(message, protocol=4)) == message
    view = loads_outcome(dumps(message))
    assert loads_outcome(dumps(view)) == message
    small = CallRequest(memoryview(b"function"), b"args", ())
    assert loads_request(dumps(small)) == small


@pytest.mark.parametrize(
    "data", [b"", b"\x89PL", bytes(8), b"\x89PLD\0\0\0\1" + bytes(20), b"junk" * 9]
)
def test_not_a_message_is_a_value_error(data: bytes) -> None:
    """Garbage, however it starts, is named as such."""
    with pytest.raises(ValueError, match="not a pickled message"):
        loads_outcome(data)


def with_version(data: bytes, version: int) -> bytes:
    """``data`` as if written by a build of another format version: the
    version sits after the 4-byte magic, as a 4-byte big-endian integer."""
    return data[:4] + version.to_bytes(4, "big") + data[8:]


def test_the_format_version_leads_the_payload() -> None:
    data = dumps(outcome(BIG))
    assert data[:8] == b"\x89PLD" + FORMAT_VERSION.to_bytes(4, "big")
    assert loads_outcome(with_version(data, FORMAT_VERSION)) == outcome(BIG)


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 2**32 - 1])
def test_another_version_is_refused_by_name(version: int) -> None:
    """A payload of another format version fails with both versions named,
    and which side made it, before any of it is unpickled."""
    request = with_version(dumps(CallRequest(b"f", b"a", ())), version)
    expected = (
        f"payload format version {version}, but this worker reads version {FORMAT_VERSION}: "
        "it was made by another version of distribute_client"
    )
    with pytest.raises(ValueError, match=expected):
        loads_request(request)
    answer = with_version(dumps(outcome(b"x")), version)
    with pytest.raises(ValueError, match=f"{version}, but this client reads version"):
        loads_outcome(answer)


def unversioned(message: CallRequest | CallOutcome) -> bytes:
    """A payload as written before versions existed: the pickle, its buffers, the trailer."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    parts = [head, *(bytes(buffer.raw()) for buffer in buffers)]
    trailer = struct.pack(f">{len(parts) + 1}Q", *map(len, parts), len(parts))
    return b"".join([*parts, trailer])


@pytest.mark.parametrize(
    "data",
    [
        unversioned(CallRequest(b"f", BIG, ())),
        unversioned(CallRequest(b"f", b"a", ())),
        pickle.dumps(CallRequest(b"f", b"a", ())),  # older still: a bare pickle
    ],
)
def test_a_payload_from_before_versions_is_named_as_such(data: bytes) -> None:
    with pytest.raises(ValueError, match="without a format version, made by a distribute_client"):
        loads_request(data)


def test_a_call_of_another_version_is_a_serialization_error(server: ServerProcess) -> None:
    """Sent to a real worker, a call of another format version comes back as
    BAD_REQUEST (a SerializationError to the client) naming both versions,
    and the worker that read it serves on."""
    arguments = cloudpickle.dumps((("four",), {}))
    call = dumps(CallRequest(cloudpickle.dumps(len), arguments, ()))
    pids = server.pids()
    with grpc.insecure_channel(server.address) as channel:
        stub = pool_pb2_grpc.PoolStub(channel)
        request = pool_pb2.RunRequest(payload=with_version(call, 7))
        other = stub.Run(request, timeout=30, metadata=AUTH_METADATA)
        same = stub.Run(pool_pb2.RunRequest(payload=call), timeout=30, metadata=AUTH_METADATA)
    answer = loads_outcome(other.outcome)
    assert isinstance(answer, CallOutcome) and answer.status is OutcomeStatus.BAD_REQUEST
    versions = f"payload format version 7, but this worker reads version {FORMAT_VERSION}"
    with pytest.raises(SerializationError, match=versions):
        decode_outcome(other.outcome, "len", f"worker {other.worker_id}")
    assert decode_outcome(same.outcome, "len", f"worker {same.worker_id}") == 4
    assert server.pids() == pids
