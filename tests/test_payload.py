"""The pickled payload format: big fields out of band, read back as views."""

from __future__ import annotations

import copy
import os
import pickle
import struct

import pytest

from pool_wire.payload import (
    OUT_OF_BAND_BYTES,
    BatchOutcome,
    CallOutcome,
    CallRequest,
    OutcomeStatus,
    dumps,
    loads_outcome,
    loads_request,
)

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


@pytest.mark.parametrize("data", [b"", b"\x80", bytes(8), pickle.dumps(outcome(b"x"))])
def test_not_a_message_is_a_value_error(data: bytes) -> None:
    """Garbage, or a payload of an earlier version (a bare pickle)."""
    with pytest.raises(ValueError, match="not a pickled message"):
        loads_outcome(data)
