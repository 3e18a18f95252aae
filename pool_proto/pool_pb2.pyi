from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_TIMED_OUT: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_IDLE: _ClassVar[WorkerState]
    WORKER_STATE_BUSY: _ClassVar[WorkerState]
    WORKER_STATE_STOPPING: _ClassVar[WorkerState]
    WORKER_STATE_DEAD: _ClassVar[WorkerState]

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_INTERNAL: _ClassVar[ErrorKind]
    ERROR_KIND_WORKER_CRASHED: _ClassVar[ErrorKind]
    ERROR_KIND_DEADLINE: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID: _ClassVar[ErrorKind]
    ERROR_KIND_SHUTTING_DOWN: _ClassVar[ErrorKind]
    ERROR_KIND_JOB_TIMED_OUT: _ClassVar[ErrorKind]
    ERROR_KIND_INTERRUPTED: _ClassVar[ErrorKind]
    ERROR_KIND_CANCELLED: _ClassVar[ErrorKind]
    ERROR_KIND_NOT_FOUND: _ClassVar[ErrorKind]
    ERROR_KIND_JOURNAL_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_QUEUE_FULL: _ClassVar[ErrorKind]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_TIMED_OUT: JobState
JOB_STATE_INTERRUPTED: JobState
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_IDLE: WorkerState
WORKER_STATE_BUSY: WorkerState
WORKER_STATE_STOPPING: WorkerState
WORKER_STATE_DEAD: WorkerState
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_INTERNAL: ErrorKind
ERROR_KIND_WORKER_CRASHED: ErrorKind
ERROR_KIND_DEADLINE: ErrorKind
ERROR_KIND_INVALID: ErrorKind
ERROR_KIND_SHUTTING_DOWN: ErrorKind
ERROR_KIND_JOB_TIMED_OUT: ErrorKind
ERROR_KIND_INTERRUPTED: ErrorKind
ERROR_KIND_CANCELLED: ErrorKind
ERROR_KIND_NOT_FOUND: ErrorKind
ERROR_KIND_JOURNAL_UNAVAILABLE: ErrorKind
ERROR_KIND_QUEUE_FULL: ErrorKind

class RunRequest(_message.Message):
    __slots__ = ("payload", "retries", "function_hash", "function", "refs")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_HASH_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    retries: int
    function_hash: str
    function: bytes
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, payload: _Optional[bytes] = ..., retries: _Optional[int] = ..., function_hash: _Optional[str] = ..., function: _Optional[bytes] = ..., refs: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectData(_message.Message):
    __slots__ = ("pickled",)
    PICKLED_FIELD_NUMBER: _ClassVar[int]
    pickled: bytes
    def __init__(self, pickled: _Optional[bytes] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("key", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("request", "reply", "total_bytes", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: RunRequest
    reply: RunReply
    total_bytes: int
    data: bytes
    def __init__(self, request: _Optional[_Union[RunRequest, _Mapping]] = ..., reply: _Optional[_Union[RunReply, _Mapping]] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CallMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[CallMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[CallMessage, _Mapping]]] = ...) -> None: ...

class CallEvents(_message.Message):
    __slots__ = ("events", "load")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[CallEvent]
    load: Load
    def __init__(self, events: _Optional[_Iterable[_Union[CallEvent, _Mapping]]] = ..., load: _Optional[_Union[Load, _Mapping]] = ...) -> None: ...

class Load(_message.Message):
    __slots__ = ("workers", "busy_workers", "queue_length")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BUSY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    workers: int
    busy_workers: int
    queue_length: int
    def __init__(self, workers: _Optional[int] = ..., busy_workers: _Optional[int] = ..., queue_length: _Optional[int] = ...) -> None: ...

class CallMessage(_message.Message):
    __slots__ = ("call_id", "start", "cancel", "deadline_s", "progress")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    start: RunRequest
    cancel: CallCancel
    deadline_s: float
    progress: bool
    def __init__(self, call_id: _Optional[int] = ..., start: _Optional[_Union[RunRequest, _Mapping]] = ..., cancel: _Optional[_Union[CallCancel, _Mapping]] = ..., deadline_s: _Optional[float] = ..., progress: _Optional[bool] = ...) -> None: ...

class CallCancel(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CallEvent(_message.Message):
    __slots__ = ("call_id", "reply", "failed", "function_needed", "progress")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NEEDED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    reply: RunReply
    failed: CallFailed
    function_needed: FunctionNeeded
    progress: CallProgress
    def __init__(self, call_id: _Optional[int] = ..., reply: _Optional[_Union[RunReply, _Mapping]] = ..., failed: _Optional[_Union[CallFailed, _Mapping]] = ..., function_needed: _Optional[_Union[FunctionNeeded, _Mapping]] = ..., progress: _Optional[_Union[CallProgress, _Mapping]] = ...) -> None: ...

class CallProgress(_message.Message):
    __slots__ = ("fraction", "message")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    message: str
    def __init__(self, fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class CallFailed(_message.Message):
    __slots__ = ("code", "message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FunctionNeeded(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("outcome", "worker_id", "worker_pid", "job_id")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    outcome: bytes
    worker_id: int
    worker_pid: int
    job_id: str
    def __init__(self, outcome: _Optional[bytes] = ..., worker_id: _Optional[int] = ..., worker_pid: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class GetWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "pid", "state", "jobs_done", "restarts", "recycles", "rss_bytes", "last_exit_reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOBS_DONE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RECYCLES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_REASON_FIELD_NUMBER: _ClassVar[int]
    id: int
    pid: int
    state: WorkerState
    jobs_done: int
    restarts: int
    recycles: int
    rss_bytes: int
    last_exit_reason: str
    def __init__(self, id: _Optional[int] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ..., jobs_done: _Optional[int] = ..., restarts: _Optional[int] = ..., recycles: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., last_exit_reason: _Optional[str] = ...) -> None: ...

class WorkerLimits(_message.Message):
    __slots__ = ("min_workers", "max_workers")
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    min_workers: int
    max_workers: int
    def __init__(self, min_workers: _Optional[int] = ..., max_workers: _Optional[int] = ...) -> None: ...

class GetWorkersReply(_message.Message):
    __slots__ = ("workers", "queue_length", "queue_capacity", "limits")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    queue_length: int
    queue_capacity: int
    limits: WorkerLimits
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., queue_length: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., limits: _Optional[_Union[WorkerLimits, _Mapping]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("payloads", "retries", "time_limit_s", "batch_id", "name", "item_counts", "item_offsets", "function_hash", "function")
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ITEM_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_HASH_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    retries: int
    time_limit_s: float
    batch_id: str
    name: str
    item_counts: _containers.RepeatedScalarFieldContainer[int]
    item_offsets: _containers.RepeatedScalarFieldContainer[int]
    function_hash: str
    function: bytes
    def __init__(self, payloads: _Optional[_Iterable[bytes]] = ..., retries: _Optional[int] = ..., time_limit_s: _Optional[float] = ..., batch_id: _Optional[str] = ..., name: _Optional[str] = ..., item_counts: _Optional[_Iterable[int]] = ..., item_offsets: _Optional[_Iterable[int]] = ..., function_hash: _Optional[str] = ..., function: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("id", "state", "progress", "message", "attempts", "max_attempts", "worker_id", "created_at", "started_at", "finished_at", "error", "batch_id", "name", "items", "item_offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ITEM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    progress: float
    message: str
    attempts: int
    max_attempts: int
    worker_id: int
    created_at: float
    started_at: float
    finished_at: float
    error: str
    batch_id: str
    name: str
    items: int
    item_offset: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., worker_id: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error: _Optional[str] = ..., batch_id: _Optional[str] = ..., name: _Optional[str] = ..., items: _Optional[int] = ..., item_offset: _Optional[int] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("job_id", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("text", "skipped", "finished")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    text: str
    skipped: int
    finished: bool
    def __init__(self, text: _Optional[str] = ..., skipped: _Optional[int] = ..., finished: _Optional[bool] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("status", "outcome")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    outcome: bytes
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ..., outcome: _Optional[bytes] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "batch_id", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    batch_id: str
    limit: int
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., batch_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class BatchRef(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class BatchStatus(_message.Message):
    __slots__ = ("batch_id", "total", "states", "percent_done")
    class StatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PERCENT_DONE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    total: int
    states: _containers.ScalarMap[str, int]
    percent_done: float
    def __init__(self, batch_id: _Optional[str] = ..., total: _Optional[int] = ..., states: _Optional[_Mapping[str, int]] = ..., percent_done: _Optional[float] = ...) -> None: ...
