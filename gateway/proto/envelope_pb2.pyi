from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dialect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIALECT_UNSPECIFIED: _ClassVar[Dialect]
    DIALECT_HTTP: _ClassVar[Dialect]
    DIALECT_GRPC: _ClassVar[Dialect]

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_FLEET: _ClassVar[Kind]
    KIND_AGENT: _ClassVar[Kind]
    KIND_ADMIN: _ClassVar[Kind]

class Origin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORIGIN_UNSPECIFIED: _ClassVar[Origin]
    ORIGIN_UPSTREAM: _ClassVar[Origin]
    ORIGIN_GATEWAY: _ClassVar[Origin]
DIALECT_UNSPECIFIED: Dialect
DIALECT_HTTP: Dialect
DIALECT_GRPC: Dialect
KIND_FLEET: Kind
KIND_AGENT: Kind
KIND_ADMIN: Kind
ORIGIN_UNSPECIFIED: Origin
ORIGIN_UPSTREAM: Origin
ORIGIN_GATEWAY: Origin

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("job_id", "site", "message_id", "method", "dialect", "headers", "body", "deadline_unix_ms", "attempt", "kind", "signed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DIALECT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    site: str
    message_id: str
    method: str
    dialect: Dialect
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    deadline_unix_ms: int
    attempt: int
    kind: Kind
    signed: SiteSignature
    def __init__(self, job_id: _Optional[str] = ..., site: _Optional[str] = ..., message_id: _Optional[str] = ..., method: _Optional[str] = ..., dialect: _Optional[_Union[Dialect, str]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., deadline_unix_ms: _Optional[int] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., signed: _Optional[_Union[SiteSignature, _Mapping]] = ...) -> None: ...

class SiteSignature(_message.Message):
    __slots__ = ("envelope", "cert", "ts_ms", "nonce", "signature")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CERT_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    cert: bytes
    ts_ms: int
    nonce: str
    signature: bytes
    def __init__(self, envelope: _Optional[bytes] = ..., cert: _Optional[bytes] = ..., ts_ms: _Optional[int] = ..., nonce: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("message_id", "origin", "http_status", "grpc_code", "detail", "headers", "body")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    GRPC_CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    origin: Origin
    http_status: int
    grpc_code: int
    detail: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    def __init__(self, message_id: _Optional[str] = ..., origin: _Optional[_Union[Origin, str]] = ..., http_status: _Optional[int] = ..., grpc_code: _Optional[int] = ..., detail: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ...) -> None: ...
