from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("outcome", "worker_id", "worker_pid", "job_id")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    outcome: bytes
    worker_id: int
    worker_pid: int
    job_id: int
    def __init__(self, outcome: _Optional[bytes] = ..., worker_id: _Optional[int] = ..., worker_pid: _Optional[int] = ..., job_id: _Optional[int] = ...) -> None: ...

class GetWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "pid", "state", "jobs_done", "restarts")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOBS_DONE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    id: int
    pid: int
    state: str
    jobs_done: int
    restarts: int
    def __init__(self, id: _Optional[int] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., jobs_done: _Optional[int] = ..., restarts: _Optional[int] = ...) -> None: ...

class GetWorkersReply(_message.Message):
    __slots__ = ("workers", "queue_length", "queue_capacity")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    queue_length: int
    queue_capacity: int
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., queue_length: _Optional[int] = ..., queue_capacity: _Optional[int] = ...) -> None: ...
