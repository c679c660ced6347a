from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AdapterContainer(_message.Message):
    __slots__ = ("metadata", "grpc_message_name", "grpc_message_content")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    GRPC_MESSAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_MESSAGE_CONTENT_FIELD_NUMBER: _ClassVar[int]
    metadata: _containers.ScalarMap[str, str]
    grpc_message_name: str
    grpc_message_content: bytes
    def __init__(self, metadata: _Optional[_Mapping[str, str]] = ..., grpc_message_name: _Optional[str] = ..., grpc_message_content: _Optional[bytes] = ...) -> None: ...
