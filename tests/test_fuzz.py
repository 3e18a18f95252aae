"""A property-based fuzz of every Pool RPC against one real server (issue 9,
"Hostile input").

Each RPC gets random requests: payloads that are random bytes, not pickles,
pickles of the wrong type, pickles that raise when loaded, truncated or
garbled out-of-band frames, JSON calls of functions that do not exist, and
a few real calls; absurd retries, item counts, time limits and list limits;
megabyte-long ids, names and batch ids. The property: every answer is OK
or a deliberate status (never UNKNOWN, INTERNAL or UNAVAILABLE), and its
message is short. The last test checks that the server took no harm: it
answers a normal call, its pool has its full size, and a job submitted
before the fuzz has its right result. It prints how many cases ran.

The requests go through the raw stub (``pool_proto``), so that the server,
not the client library's own checks, is what answers. Payloads stay small
and Run deadlines short, so that the two workers are never clogged.
"""

from __future__ import annotations

import json
import math
import operator
import os
import pickle
import struct
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distribute_client import Job, compute_this
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.limits import GRPC_MESSAGE_OPTIONS, MAX_RETRIES
from pool_wire.payload import OUT_OF_BAND_BYTES, CallRequest, dumps

from .conftest import ServerProcess, wait_until

WORKERS = 2  # the shared `server` fixture's

# Statuses the server answers on purpose. UNKNOWN and INTERNAL are bugs;
# UNAVAILABLE would mean the server (or its journal) went away.
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a short Run/GetResult/WatchJob deadline, a time limit
    grpc.StatusCode.CANCELLED,  # the result of a job the fuzz cancelled
    grpc.StatusCode.ABORTED,  # a job whose worker crashed
}
MAX_DETAILS_CHARS = 1000  # no error echoes a megabyte back
RUN_DEADLINE_S = 2.0
LOOKUP_DEADLINE_S = 2.0

# One budget per RPC: 6,000 cases in all, about half a minute on 2 cores.
EXAMPLES = {
    "Run": 1000,
    "GetWorkers": 200,
    "Submit": 1000,
    "GetJob": 1000,
    "WatchJob": 500,
    "GetResult": 500,
    "CancelJob": 500,
    "ListJobs": 600,
    "GetBatch": 700,
}

CASES: Counter[str] = Counter()
ANSWERS: Counter[str] = Counter()
SUBMITTED: list[str] = []  # ids of jobs the fuzz submitted, to look up and cancel


def fuzz_settings(method: str) -> settings:
    return settings(
        max_examples=EXAMPLES[method],
        deadline=None,
        database=None,  # nothing written into the repository
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Payloads.

_HEADER = struct.Struct(">4sI")


def frame(parts: list[bytes], version: int = 1) -> bytes:
    """The pickled payload format (pool_wire/payload.py) around ``parts``."""
    trailer = struct.pack(f">{len(parts) + 1}Q", *(len(p) for p in parts), len(parts))
    return b"".join([_HEADER.pack(b"\x89PLD", version), *parts, trailer])


class RaisesWhenLoaded:
    """Unpickles as int("not a number"): a ValueError in the worker's loads()."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return int, ("not a number",)


def call_of(function: Any, *args: Any) -> bytes:
    return dumps(CallRequest(pickle.dumps(function), pickle.dumps((args, {})), ()))


MULTIPLY = call_of(operator.mul, 6, 7)
# A real call whose argument travels out of band, to truncate and garble.
OUT_OF_BAND = call_of(len, b"x" * (OUT_OF_BAND_BYTES + 10))

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def garbled_trailer(draw: st.DrawFn) -> bytes:
    """The out-of-band call with its trailer's lengths or count replaced."""
    cut = draw(st.integers(1, 48))
    return OUT_OF_BAND[:-cut] + draw(st.binary(min_size=cut, max_size=cut))


payloads = st.one_of(
    st.binary(max_size=200),  # not pickles (and empty ones)
    st.binary(max_size=64).map(lambda b: b"\x89PLD" + b),  # the magic, then noise
    st.binary(max_size=64).map(lambda b: _HEADER.pack(b"\x89PLD", 1) + b),
    st.integers(0, 2**32 - 1).map(lambda v: frame([pickle.dumps(1)], v)),  # other versions
    plain_values.map(lambda v: frame([pickle.dumps(v)])),  # pickles of the wrong type
    plain_values.map(lambda v: b"\x80" + pickle.dumps(v)[1:]),  # unversioned pickles
    st.just(frame([pickle.dumps(RaisesWhenLoaded())])),  # raises when loaded
    st.just(dumps(CallRequest(pickle.dumps(RaisesWhenLoaded()), pickle.dumps(((), {})), ()))),
    st.just(dumps(CallRequest(pickle.dumps(len), pickle.dumps(RaisesWhenLoaded()), ()))),
    st.just(dumps(CallRequest(pickle.dumps(len), pickle.dumps(7), ("no_such_module_xyz",)))),
    st.integers(0, len(OUT_OF_BAND) - 1).map(lambda n: OUT_OF_BAND[:n]),  # truncated
    garbled_trailer(),
    st.builds(
        lambda f, a: json.dumps({"function": f, "args": a}).encode(),
        st.text(max_size=30),
        plain_values,
    ),  # JSON calls of functions that (almost surely) do not exist
    st.binary(max_size=40).map(lambda b: b"{" + b),  # JSON that is not
    st.just(MULTIPLY),  # and real calls
    st.just(json.dumps({"function": "operator:add", "args": [1, 2]}).encode()),
)

MEGABYTE = "m" * (1 << 20)
# Mostly short, sometimes at or past the limits, now and then a megabyte.
short_texts = st.text(max_size=20)
texts = st.one_of(
    short_texts,
    short_texts,
    short_texts,
    st.text(min_size=250, max_size=1100),
    st.just(MEGABYTE),
)
# A few batch ids that Submit and GetBatch share, so that some batches exist.
batch_ids = st.one_of(st.sampled_from(["", "b1", "b2"]), texts)
valid_retries = st.integers(0, MAX_RETRIES)
retries = st.one_of(valid_retries, valid_retries, st.integers(0, 2**32 - 1), st.just(2**32 - 1))
counts = st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1), st.just(4_000_000_000))
time_limits = st.sampled_from(
    [0.0, 0.0, 3600.0, math.nan, math.inf, -math.inf, -1.0, 1e300, 4e9, -0.0, 5e-324]
)
states = st.one_of(st.integers(0, 8), st.integers(-(2**31), 2**31 - 1))
limits = st.one_of(st.integers(0, 50), st.just(2**32 - 1), st.integers(0, 2**32 - 1))


@st.composite
def job_ids(draw: st.DrawFn) -> str:
    """A job the fuzz submitted, now and then; else anything."""
    pick_known: bool = bool(SUBMITTED) and draw(st.booleans())
    if pick_known:
        known: str = draw(st.sampled_from(SUBMITTED))
        return known
    return draw(st.one_of(texts, st.from_regex(r"j[0-9a-f]{16}", fullmatch=True)))


# The server and the property.


class Fuzzer:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=GRPC_MESSAGE_OPTIONS)
        self.stub = pool_pb2_grpc.PoolStub(self.channel)
        token = os.environ.get("POOL_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def check(self, method: str, request: Any, timeout: float = LOOKUP_DEADLINE_S) -> Any:
        """Call; assert the answer is deliberate and short; the reply, if OK."""
        CASES[method] += 1
        call = getattr(self.stub, method)
        try:
            if method == "WatchJob":
                reply: Any = list(call(request, timeout=timeout, metadata=self.metadata))
            else:
                reply = call(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            error: grpc.Call = e
            code, details = error.code(), error.details() or ""
            ANSWERS[f"{method} {code.name}"] += 1
            assert code in DELIBERATE, f"{method} answered {code.name}: {details[:500]}"
            assert len(details) <= MAX_DETAILS_CHARS, f"{method}: {len(details)} chars"
            return None
        ANSWERS[f"{method} OK"] += 1
        return reply


@pytest.fixture(scope="module")
def fuzzer(server: ServerProcess) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(server.address)
    yield fuzzer
    fuzzer.channel.close()


def slow_answer() -> int:
    time.sleep(2)
    return 42


@pytest.fixture(scope="module")
def job_before(server: ServerProcess) -> Job[int]:
    """A job submitted before the fuzz; it runs while the fuzz does."""
    return compute_this(server.address)(slow_answer).submit()


def test_fuzz_run(fuzzer: Fuzzer, job_before: Job[int]) -> None:
    @fuzz_settings("Run")
    @given(payload=payloads, retries=retries)
    def run(payload: bytes, retries: int) -> None:
        request = pool_pb2.RunRequest(payload=payload, retries=retries)
        fuzzer.check("Run", request, timeout=RUN_DEADLINE_S)

    run()


def test_fuzz_get_workers(fuzzer: Fuzzer) -> None:
    @fuzz_settings("GetWorkers")
    @given(st.integers())  # the request has no fields: only repetition
    def get_workers(_: int) -> None:
        reply = fuzzer.check("GetWorkers", pool_pb2.GetWorkersRequest())
        assert reply is not None and len(reply.workers) == WORKERS

    get_workers()


def test_fuzz_submit(fuzzer: Fuzzer) -> None:
    @fuzz_settings("Submit")
    @given(
        payloads=st.lists(payloads, max_size=4),
        retries=retries,
        time_limit=time_limits,
        batch_id=batch_ids,
        name=texts,
        item_counts=st.one_of(st.just([]), st.just([]), st.lists(counts, max_size=5)),
    )
    def submit(
        payloads: list[bytes],
        retries: int,
        time_limit: float,
        batch_id: str,
        name: str,
        item_counts: list[int],
    ) -> None:
        request = pool_pb2.SubmitRequest(
            payloads=payloads,
            retries=retries,
            time_limit_s=time_limit,
            batch_id=batch_id,
            name=name,
            item_counts=item_counts,
        )
        reply = fuzzer.check("Submit", request)
        if reply is not None:
            SUBMITTED.extend(reply.job_ids)

    submit()


@pytest.mark.parametrize("method", ["GetJob", "WatchJob", "GetResult", "CancelJob"])
def test_fuzz_job_lookups(fuzzer: Fuzzer, method: str) -> None:
    @fuzz_settings(method)
    @given(job_id=job_ids())
    def look_up(job_id: str) -> None:
        fuzzer.check(method, pool_pb2.JobRef(job_id=job_id))

    look_up()


def test_fuzz_list_jobs(fuzzer: Fuzzer) -> None:
    @fuzz_settings("ListJobs")
    @given(state=states, batch_id=batch_ids, limit=limits)
    def list_jobs(state: int, batch_id: str, limit: int) -> None:
        request = pool_pb2.ListJobsRequest(state=state, batch_id=batch_id, limit=limit)  # type: ignore[arg-type]
        reply = fuzzer.check("ListJobs", request)
        if reply is not None:
            assert len(reply.jobs) <= 10_000

    list_jobs()


def test_fuzz_get_batch(fuzzer: Fuzzer) -> None:
    @fuzz_settings("GetBatch")
    @given(batch_id=batch_ids)
    def get_batch(batch_id: str) -> None:
        fuzzer.check("GetBatch", pool_pb2.BatchRef(batch_id=batch_id))

    get_batch()


def test_the_server_took_no_harm(
    server: ServerProcess, fuzzer: Fuzzer, job_before: Job[int], capsys: pytest.CaptureFixture[str]
) -> None:
    """After the fuzz: a normal call works, every worker slot is back, and the
    job submitted before has its right result. Prints the case count."""
    assert compute_this(server.address, timeout=30)(operator.mul)(6, 7).compute() == 42
    assert job_before.result(timeout=60) == 42
    client = server.client()
    wait_until(
        lambda: all(w.pid for w in client.workers()), 30, "every worker slot to have a worker"
    )
    assert len(client.workers()) == WORKERS
    total = sum(CASES.values())
    summary = ", ".join(f"{method} {n}" for method, n in CASES.items())
    statuses = ", ".join(f"{k} {n}" for k, n in sorted(ANSWERS.items()))
    with capsys.disabled():  # shown even when the test passes
        print(f"\nfuzz: {total} cases against one server ({summary})")
        print(f"fuzz answers: {statuses}")
    if len(CASES) == len(EXAMPLES):  # the whole module ran, not a selection
        assert total >= 0.9 * sum(EXAMPLES.values())
