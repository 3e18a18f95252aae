"""The names the sides share agree everywhere they are spelt.

``proto/pool.proto`` is the source of truth; ``pool_wire.names`` mirrors its
enums for Python and text; the server has one error class per error kind
(``pool_server.errors``), and the client one exception class per kind
(``distribute_client.errors``), translated at one boundary
(``distribute_client._transport``). In the manner of httpx's test that every
transport exception is mapped, these tests fail when a kind or a class is
added on one side only.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import distribute_client
from distribute_client import _transport, errors
from distribute_client.errors import CLIENT_ONLY_ERRORS, ERRORS_BY_KIND, PoolError
from pool_proto import pool_pb2
from pool_server import errors as server_errors
from pool_wire import names
from pool_wire.names import ErrorKind

MIRRORS: list[tuple[type[names._ProtoName], Any, str]] = [
    (names.JobState, pool_pb2.JobState, "JOB_STATE_"),
    (names.WorkerState, pool_pb2.WorkerState, "WORKER_STATE_"),
    (names.ErrorKind, pool_pb2.ErrorKind, "ERROR_KIND_"),
]

IDS = [mirror.__name__ for mirror, _, _ in MIRRORS]

ADDRESS = _transport.Address.parse("127.0.0.1:1")


def _subclasses(cls: type[Any]) -> set[type[Any]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


@pytest.mark.parametrize(("mirror", "proto", "prefix"), MIRRORS, ids=IDS)
def test_each_proto_enum_has_exactly_its_mirror_members(
    mirror: type[names._ProtoName], proto: Any, prefix: str
) -> None:
    """The proto enum is UNSPECIFIED (0) plus one value per mirror member, by name."""
    assert proto.Value(f"{prefix}UNSPECIFIED") == 0
    assert mirror.proto_prefix() == prefix
    assert set(proto.keys()) == {f"{prefix}UNSPECIFIED"} | {m.to_proto() for m in mirror}


@pytest.mark.parametrize(("mirror", "proto", "prefix"), MIRRORS, ids=IDS)
def test_to_proto_and_from_proto_round_trip(
    mirror: type[names._ProtoName], proto: Any, prefix: str
) -> None:
    """Every member goes to its proto value and back; UNSPECIFIED has no member."""
    for member in mirror:
        assert mirror.from_proto(proto.Value(member.to_proto())) is member
    for number in proto.values():
        if number:
            assert mirror.from_proto(number).to_proto() == proto.Name(number)
    with pytest.raises(ValueError, match="UNSPECIFIED"):
        mirror.from_proto(0)


def test_every_error_kind_has_exactly_one_server_class() -> None:
    """One pool_server error class per kind: none missing, none doubled."""
    classes = {server_errors.CallError} | _subclasses(server_errors.CallError)
    kinds = sorted(cls.kind for cls in classes)
    assert kinds == sorted(ErrorKind)
    assert {cls.kind: cls for cls in classes} == server_errors.ERRORS_BY_KIND


def test_every_error_kind_has_its_own_client_class() -> None:
    """Each kind becomes a client exception class no other kind shares."""
    assert set(ERRORS_BY_KIND) == set(ErrorKind)
    assert len(set(ERRORS_BY_KIND.values())) == len(ERRORS_BY_KIND)


def test_every_client_error_is_mapped_from_a_kind_or_client_only() -> None:
    """A PoolError subclass is either what a kind becomes or raised by the client
    alone (and listed so), never both and never neither; all are exported."""
    every = {PoolError} | _subclasses(PoolError)
    mapped = set(ERRORS_BY_KIND.values())
    assert not mapped & CLIENT_ONLY_ERRORS
    assert every == mapped | CLIENT_ONLY_ERRORS
    for cls in every:
        assert cls.__module__ == errors.__name__, f"{cls} is not in distribute_client.errors"
        assert cls.__name__ in distribute_client.__all__, f"{cls.__name__} is not exported"
        assert "raised" in (cls.__doc__ or "").lower(), f"{cls.__name__} says not who raises it"


def _server_error(cls: type[server_errors.CallError]) -> server_errors.CallError:
    if cls is server_errors.WorkerCrashed:
        return server_errors.WorkerCrashed("worker 3 was killed by SIGKILL", 3, -9)
    return cls(f"a {cls.__name__}")


def _status(code: grpc.StatusCode, details: str, *metadata: tuple[str, str]) -> Any:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*metadata), details=details
    )


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_each_server_error_becomes_its_client_class(kind: ErrorKind) -> None:
    """A server error, as it travels (status code, message, metadata), comes out
    of the client's one translation boundary as the class of its kind."""
    error = _server_error(server_errors.ERRORS_BY_KIND[kind])
    with pytest.raises(PoolError) as info, _transport.map_rpc_errors(ADDRESS, 5.0):
        raise _status(error.code, str(error), *error.metadata())
    assert type(info.value) is ERRORS_BY_KIND[kind]
    assert str(error) in str(info.value)
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    if kind is ErrorKind.WORKER_CRASHED:
        crashed = info.value
        assert isinstance(crashed, errors.WorkerCrashedError)
        assert (crashed.worker_id, crashed.exit_code, crashed.signal_name) == (3, -9, "SIGKILL")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, errors.ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.CallTimeoutError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidRequestError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, PoolError),
        (grpc.StatusCode.UNKNOWN, PoolError),
    ],
)
def test_a_status_without_a_known_kind_maps_by_its_code(
    code: grpc.StatusCode, expected: type[PoolError]
) -> None:
    """gRPC's own statuses (no server answered, the client's deadline) and kinds
    from a newer server fall back to the status code."""
    for metadata in [[], [(names.KIND_KEY, "a-kind-from-the-future")]]:
        with pytest.raises(PoolError) as info, _transport.map_rpc_errors(ADDRESS, 5.0):
            raise _status(code, "details", *metadata)
        assert type(info.value) is expected
