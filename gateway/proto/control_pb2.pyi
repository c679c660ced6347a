from gateway.proto import envelope_pb2 as _envelope_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SiteJob(_message.Message):
    __slots__ = ("job_id", "dialect", "flower_version", "partition_id", "num_partitions", "node_auth")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    FLOWER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NODE_AUTH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dialect: _envelope_pb2.Dialect
    flower_version: str
    partition_id: int
    num_partitions: int
    node_auth: bool
    def __init__(self, job_id: _Optional[str] = ..., dialect: _Optional[_Union[_envelope_pb2.Dialect, str]] = ..., flower_version: _Optional[str] = ..., partition_id: _Optional[int] = ..., num_partitions: _Optional[int] = ..., node_auth: _Optional[bool] = ...) -> None: ...

class SiteJobState(_message.Message):
    __slots__ = ("job_id", "state", "detail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    detail: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class SiteStatus(_message.Message):
    __slots__ = ("transport", "flower_version", "rtt_ms", "calls_last_minute", "errors_last_minute", "flower_versions")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    FLOWER_VERSION_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    CALLS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    FLOWER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    transport: str
    flower_version: str
    rtt_ms: float
    calls_last_minute: int
    errors_last_minute: int
    flower_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transport: _Optional[str] = ..., flower_version: _Optional[str] = ..., rtt_ms: _Optional[float] = ..., calls_last_minute: _Optional[int] = ..., errors_last_minute: _Optional[int] = ..., flower_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class PollTasksRequest(_message.Message):
    __slots__ = ("jobs", "wait_ms", "flower_node_public_key", "status")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    FLOWER_NODE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[SiteJobState]
    wait_ms: int
    flower_node_public_key: str
    status: SiteStatus
    def __init__(self, jobs: _Optional[_Iterable[_Union[SiteJobState, _Mapping]]] = ..., wait_ms: _Optional[int] = ..., flower_node_public_key: _Optional[str] = ..., status: _Optional[_Union[SiteStatus, _Mapping]] = ...) -> None: ...

class PollTasksResponse(_message.Message):
    __slots__ = ("desired", "held_ms")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    HELD_MS_FIELD_NUMBER: _ClassVar[int]
    desired: _containers.RepeatedCompositeFieldContainer[SiteJob]
    held_ms: float
    def __init__(self, desired: _Optional[_Iterable[_Union[SiteJob, _Mapping]]] = ..., held_ms: _Optional[float] = ...) -> None: ...

class ShipLogsRequest(_message.Message):
    __slots__ = ("job_id", "offset", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ShipLogsResponse(_message.Message):
    __slots__ = ("next_offset",)
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    next_offset: int
    def __init__(self, next_offset: _Optional[int] = ...) -> None: ...

class PushTrackingRequest(_message.Message):
    __slots__ = ("job_id", "points", "dropped")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    dropped: int
    def __init__(self, job_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class PushTrackingResponse(_message.Message):
    __slots__ = ("kept", "over_limit")
    KEPT_FIELD_NUMBER: _ClassVar[int]
    OVER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    kept: int
    over_limit: int
    def __init__(self, kept: _Optional[int] = ..., over_limit: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("name", "app_archive", "sites", "min_sites", "run_config", "time_limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    APP_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    MIN_SITES_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    app_archive: bytes
    sites: _containers.RepeatedScalarFieldContainer[str]
    min_sites: int
    run_config: str
    time_limit: float
    def __init__(self, name: _Optional[str] = ..., app_archive: _Optional[bytes] = ..., sites: _Optional[_Iterable[str]] = ..., min_sites: _Optional[int] = ..., run_config: _Optional[str] = ..., time_limit: _Optional[float] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "name", "state", "reason", "sites", "submitted_by", "created", "updated", "run_id", "round", "rounds", "result_json", "run_config", "fleet_calls", "flower")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    FLEET_CALLS_FIELD_NUMBER: _ClassVar[int]
    FLOWER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: str
    reason: str
    sites: _containers.RepeatedScalarFieldContainer[str]
    submitted_by: str
    created: float
    updated: float
    run_id: str
    round: int
    rounds: int
    result_json: str
    run_config: str
    fleet_calls: int
    flower: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., sites: _Optional[_Iterable[str]] = ..., submitted_by: _Optional[str] = ..., created: _Optional[float] = ..., updated: _Optional[float] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., rounds: _Optional[int] = ..., result_json: _Optional[str] = ..., run_config: _Optional[str] = ..., fleet_calls: _Optional[int] = ..., flower: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class GetLogsRequest(_message.Message):
    __slots__ = ("job_id", "source", "offset", "wait_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    source: str
    offset: int
    wait_ms: int
    def __init__(self, job_id: _Optional[str] = ..., source: _Optional[str] = ..., offset: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GetLogsResponse(_message.Message):
    __slots__ = ("data", "next_offset", "ended", "sources")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    next_offset: int
    ended: bool
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, data: _Optional[bytes] = ..., next_offset: _Optional[int] = ..., ended: _Optional[bool] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("tag", "step", "value")
    TAG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    tag: str
    step: int
    value: float
    def __init__(self, tag: _Optional[str] = ..., step: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("points", "job")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    job: JobInfo
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., job: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("archive",)
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    archive: bytes
    def __init__(self, archive: _Optional[bytes] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("name", "last_seen", "online", "jobs", "status", "via")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_seen: float
    online: bool
    jobs: _containers.RepeatedScalarFieldContainer[str]
    status: SiteStatus
    via: str
    def __init__(self, name: _Optional[str] = ..., last_seen: _Optional[float] = ..., online: _Optional[bool] = ..., jobs: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[SiteStatus, _Mapping]] = ..., via: _Optional[str] = ...) -> None: ...

class RelayInfo(_message.Message):
    __slots__ = ("name", "listeners", "started")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    listeners: _containers.RepeatedScalarFieldContainer[str]
    started: float
    def __init__(self, name: _Optional[str] = ..., listeners: _Optional[_Iterable[str]] = ..., started: _Optional[float] = ...) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites", "relay")
    SITES_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    relay: RelayInfo
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., relay: _Optional[_Union[RelayInfo, _Mapping]] = ...) -> None: ...
