from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SatAuthHeader(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNSPECIFIED: _ClassVar[SatAuthHeader]
UNSPECIFIED: SatAuthHeader

class SatRpcRequest(_message.Message):
    __slots__ = ("method", "request_id", "message")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    method: str
    request_id: int
    message: bytes
    def __init__(self, method: _Optional[str] = ..., request_id: _Optional[int] = ..., message: _Optional[bytes] = ...) -> None: ...

class SatRpcResponse(_message.Message):
    __slots__ = ("method", "request_id", "message", "error")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    method: str
    request_id: int
    message: bytes
    error: SatErrorResp
    def __init__(self, method: _Optional[str] = ..., request_id: _Optional[int] = ..., message: _Optional[bytes] = ..., error: _Optional[_Union[SatErrorResp, _Mapping]] = ...) -> None: ...

class SatAuthHeaderPair(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: SatAuthHeader
    value: str
    def __init__(self, key: _Optional[_Union[SatAuthHeader, str]] = ..., value: _Optional[str] = ...) -> None: ...

class SatAuthReq(_message.Message):
    __slots__ = ("id", "token", "headers")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    token: str
    headers: _containers.RepeatedCompositeFieldContainer[SatAuthHeaderPair]
    def __init__(self, id: _Optional[str] = ..., token: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[SatAuthHeaderPair, _Mapping]]] = ...) -> None: ...

class SatAuthResp(_message.Message):
    __slots__ = ("id", "headers")
    ID_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    id: str
    headers: _containers.RepeatedCompositeFieldContainer[SatAuthHeaderPair]
    def __init__(self, id: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[SatAuthHeaderPair, _Mapping]]] = ...) -> None: ...

class SatErrorResp(_message.Message):
    __slots__ = ("error_type", "lsn", "message")
    class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INTERNAL: _ClassVar[SatErrorResp.ErrorCode]
        AUTH_REQUIRED: _ClassVar[SatErrorResp.ErrorCode]
        AUTH_FAILED: _ClassVar[SatErrorResp.ErrorCode]
        REPLICATION_FAILED: _ClassVar[SatErrorResp.ErrorCode]
        INVALID_REQUEST: _ClassVar[SatErrorResp.ErrorCode]
        PROTO_VSN_MISMATCH: _ClassVar[SatErrorResp.ErrorCode]
        SCHEMA_VSN_MISMATCH: _ClassVar[SatErrorResp.ErrorCode]
        PERMISSION_DENIED: _ClassVar[SatErrorResp.ErrorCode]
    INTERNAL: SatErrorResp.ErrorCode
    AUTH_REQUIRED: SatErrorResp.ErrorCode
    AUTH_FAILED: SatErrorResp.ErrorCode
    REPLICATION_FAILED: SatErrorResp.ErrorCode
    INVALID_REQUEST: SatErrorResp.ErrorCode
    PROTO_VSN_MISMATCH: SatErrorResp.ErrorCode
    SCHEMA_VSN_MISMATCH: SatErrorResp.ErrorCode
    PERMISSION_DENIED: SatErrorResp.ErrorCode
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_type: SatErrorResp.ErrorCode
    lsn: bytes
    message: str
    def __init__(self, error_type: _Optional[_Union[SatErrorResp.ErrorCode, str]] = ..., lsn: _Optional[bytes] = ..., message: _Optional[str] = ...) -> None: ...

class SatInStartReplicationReq(_message.Message):
    __slots__ = ("lsn", "options", "subscription_ids", "schema_version", "observed_transaction_data", "sql_dialect", "observed_gone_batch")
    class Option(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[SatInStartReplicationReq.Option]
    NONE: SatInStartReplicationReq.Option
    class Dialect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SQLITE: _ClassVar[SatInStartReplicationReq.Dialect]
        POSTGRES: _ClassVar[SatInStartReplicationReq.Dialect]
    SQLITE: SatInStartReplicationReq.Dialect
    POSTGRES: SatInStartReplicationReq.Dialect
    LSN_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_IDS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_TRANSACTION_DATA_FIELD_NUMBER: _ClassVar[int]
    SQL_DIALECT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_GONE_BATCH_FIELD_NUMBER: _ClassVar[int]
    lsn: bytes
    options: _containers.RepeatedScalarFieldContainer[SatInStartReplicationReq.Option]
    subscription_ids: _containers.RepeatedScalarFieldContainer[str]
    schema_version: str
    observed_transaction_data: _containers.RepeatedScalarFieldContainer[int]
    sql_dialect: SatInStartReplicationReq.Dialect
    observed_gone_batch: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lsn: _Optional[bytes] = ..., options: _Optional[_Iterable[_Union[SatInStartReplicationReq.Option, str]]] = ..., subscription_ids: _Optional[_Iterable[str]] = ..., schema_version: _Optional[str] = ..., observed_transaction_data: _Optional[_Iterable[int]] = ..., sql_dialect: _Optional[_Union[SatInStartReplicationReq.Dialect, str]] = ..., observed_gone_batch: _Optional[_Iterable[str]] = ...) -> None: ...

class SatInStartReplicationResp(_message.Message):
    __slots__ = ("err", "unacked_window_size")
    class ReplicationError(_message.Message):
        __slots__ = ("code", "message")
        class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            CODE_UNSPECIFIED: _ClassVar[SatInStartReplicationResp.ReplicationError.Code]
            BEHIND_WINDOW: _ClassVar[SatInStartReplicationResp.ReplicationError.Code]
            INVALID_POSITION: _ClassVar[SatInStartReplicationResp.ReplicationError.Code]
            SUBSCRIPTION_NOT_FOUND: _ClassVar[SatInStartReplicationResp.ReplicationError.Code]
            MALFORMED_LSN: _ClassVar[SatInStartReplicationResp.ReplicationError.Code]
            UNKNOWN_SCHEMA_VSN: _ClassVar[SatInStartReplicationResp.ReplicationError.Code]
        CODE_UNSPECIFIED: SatInStartReplicationResp.ReplicationError.Code
        BEHIND_WINDOW: SatInStartReplicationResp.ReplicationError.Code
        INVALID_POSITION: SatInStartReplicationResp.ReplicationError.Code
        SUBSCRIPTION_NOT_FOUND: SatInStartReplicationResp.ReplicationError.Code
        MALFORMED_LSN: SatInStartReplicationResp.ReplicationError.Code
        UNKNOWN_SCHEMA_VSN: SatInStartReplicationResp.ReplicationError.Code
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        code: SatInStartReplicationResp.ReplicationError.Code
        message: str
        def __init__(self, code: _Optional[_Union[SatInStartReplicationResp.ReplicationError.Code, str]] = ..., message: _Optional[str] = ...) -> None: ...
    ERR_FIELD_NUMBER: _ClassVar[int]
    UNACKED_WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    err: SatInStartReplicationResp.ReplicationError
    unacked_window_size: int
    def __init__(self, err: _Optional[_Union[SatInStartReplicationResp.ReplicationError, _Mapping]] = ..., unacked_window_size: _Optional[int] = ...) -> None: ...

class SatInStopReplicationReq(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SatInStopReplicationResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SatRelationColumn(_message.Message):
    __slots__ = ("name", "type", "primaryKey", "is_nullable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIMARYKEY_FIELD_NUMBER: _ClassVar[int]
    IS_NULLABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    primaryKey: bool
    is_nullable: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., primaryKey: _Optional[bool] = ..., is_nullable: _Optional[bool] = ...) -> None: ...

class SatRelation(_message.Message):
    __slots__ = ("schema_name", "table_type", "table_name", "relation_id", "columns")
    class RelationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TABLE: _ClassVar[SatRelation.RelationType]
        INDEX: _ClassVar[SatRelation.RelationType]
        VIEW: _ClassVar[SatRelation.RelationType]
        TRIGGER: _ClassVar[SatRelation.RelationType]
    TABLE: SatRelation.RelationType
    INDEX: SatRelation.RelationType
    VIEW: SatRelation.RelationType
    TRIGGER: SatRelation.RelationType
    SCHEMA_NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TABLE_NAME_FIELD_NUMBER: _ClassVar[int]
    RELATION_ID_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    schema_name: str
    table_type: SatRelation.RelationType
    table_name: str
    relation_id: int
    columns: _containers.RepeatedCompositeFieldContainer[SatRelationColumn]
    def __init__(self, schema_name: _Optional[str] = ..., table_type: _Optional[_Union[SatRelation.RelationType, str]] = ..., table_name: _Optional[str] = ..., relation_id: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[SatRelationColumn, _Mapping]]] = ...) -> None: ...

class SatOpLog(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[SatTransOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[SatTransOp, _Mapping]]] = ...) -> None: ...

class SatOpLogAck(_message.Message):
    __slots__ = ("ack_timestamp", "lsn", "transaction_id", "subscription_ids", "additional_data_source_ids", "gone_subscription_ids")
    ACK_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_IDS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_DATA_SOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    GONE_SUBSCRIPTION_IDS_FIELD_NUMBER: _ClassVar[int]
    ack_timestamp: int
    lsn: bytes
    transaction_id: int
    subscription_ids: _containers.RepeatedScalarFieldContainer[str]
    additional_data_source_ids: _containers.RepeatedScalarFieldContainer[int]
    gone_subscription_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ack_timestamp: _Optional[int] = ..., lsn: _Optional[bytes] = ..., transaction_id: _Optional[int] = ..., subscription_ids: _Optional[_Iterable[str]] = ..., additional_data_source_ids: _Optional[_Iterable[int]] = ..., gone_subscription_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SatTransOp(_message.Message):
    __slots__ = ("begin", "commit", "update", "insert", "delete", "migrate", "compensation", "gone", "additional_begin", "additional_commit")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    INSERT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    GONE_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_BEGIN_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_COMMIT_FIELD_NUMBER: _ClassVar[int]
    begin: SatOpBegin
    commit: SatOpCommit
    update: SatOpUpdate
    insert: SatOpInsert
    delete: SatOpDelete
    migrate: SatOpMigrate
    compensation: SatOpCompensation
    gone: SatOpGone
    additional_begin: SatOpAdditionalBegin
    additional_commit: SatOpAdditionalCommit
    def __init__(self, begin: _Optional[_Union[SatOpBegin, _Mapping]] = ..., commit: _Optional[_Union[SatOpCommit, _Mapping]] = ..., update: _Optional[_Union[SatOpUpdate, _Mapping]] = ..., insert: _Optional[_Union[SatOpInsert, _Mapping]] = ..., delete: _Optional[_Union[SatOpDelete, _Mapping]] = ..., migrate: _Optional[_Union[SatOpMigrate, _Mapping]] = ..., compensation: _Optional[_Union[SatOpCompensation, _Mapping]] = ..., gone: _Optional[_Union[SatOpGone, _Mapping]] = ..., additional_begin: _Optional[_Union[SatOpAdditionalBegin, _Mapping]] = ..., additional_commit: _Optional[_Union[SatOpAdditionalCommit, _Mapping]] = ...) -> None: ...

class SatOpBegin(_message.Message):
    __slots__ = ("commit_timestamp", "lsn", "origin", "is_migration", "additional_data_ref", "transaction_id")
    COMMIT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    IS_MIGRATION_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_DATA_REF_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    commit_timestamp: int
    lsn: bytes
    origin: str
    is_migration: bool
    additional_data_ref: int
    transaction_id: int
    def __init__(self, commit_timestamp: _Optional[int] = ..., lsn: _Optional[bytes] = ..., origin: _Optional[str] = ..., is_migration: _Optional[bool] = ..., additional_data_ref: _Optional[int] = ..., transaction_id: _Optional[int] = ...) -> None: ...

class SatOpAdditionalBegin(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: int
    def __init__(self, ref: _Optional[int] = ...) -> None: ...

class SatOpCommit(_message.Message):
    __slots__ = ("commit_timestamp", "lsn", "additional_data_ref", "transaction_id")
    COMMIT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_DATA_REF_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    commit_timestamp: int
    lsn: bytes
    additional_data_ref: int
    transaction_id: int
    def __init__(self, commit_timestamp: _Optional[int] = ..., lsn: _Optional[bytes] = ..., additional_data_ref: _Optional[int] = ..., transaction_id: _Optional[int] = ...) -> None: ...

class SatOpAdditionalCommit(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: int
    def __init__(self, ref: _Optional[int] = ...) -> None: ...

class SatOpInsert(_message.Message):
    __slots__ = ("relation_id", "row_data", "tags")
    RELATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_DATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    relation_id: int
    row_data: SatOpRow
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, relation_id: _Optional[int] = ..., row_data: _Optional[_Union[SatOpRow, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class SatOpUpdate(_message.Message):
    __slots__ = ("relation_id", "row_data", "old_row_data", "tags")
    RELATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_DATA_FIELD_NUMBER: _ClassVar[int]
    OLD_ROW_DATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    relation_id: int
    row_data: SatOpRow
    old_row_data: SatOpRow
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, relation_id: _Optional[int] = ..., row_data: _Optional[_Union[SatOpRow, _Mapping]] = ..., old_row_data: _Optional[_Union[SatOpRow, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class SatOpDelete(_message.Message):
    __slots__ = ("relation_id", "old_row_data", "tags")
    RELATION_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_ROW_DATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    relation_id: int
    old_row_data: SatOpRow
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, relation_id: _Optional[int] = ..., old_row_data: _Optional[_Union[SatOpRow, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class SatOpCompensation(_message.Message):
    __slots__ = ("relation_id", "pk_data", "tags")
    RELATION_ID_FIELD_NUMBER: _ClassVar[int]
    PK_DATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    relation_id: int
    pk_data: SatOpRow
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, relation_id: _Optional[int] = ..., pk_data: _Optional[_Union[SatOpRow, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class SatOpGone(_message.Message):
    __slots__ = ("relation_id", "pk_data")
    RELATION_ID_FIELD_NUMBER: _ClassVar[int]
    PK_DATA_FIELD_NUMBER: _ClassVar[int]
    relation_id: int
    pk_data: SatOpRow
    def __init__(self, relation_id: _Optional[int] = ..., pk_data: _Optional[_Union[SatOpRow, _Mapping]] = ...) -> None: ...

class SatOpRow(_message.Message):
    __slots__ = ("nulls_bitmask", "values")
    NULLS_BITMASK_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    nulls_bitmask: bytes
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, nulls_bitmask: _Optional[bytes] = ..., values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SatOpMigrate(_message.Message):
    __slots__ = ("version", "stmts", "table", "enum_type")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CREATE_TABLE: _ClassVar[SatOpMigrate.Type]
        CREATE_INDEX: _ClassVar[SatOpMigrate.Type]
        CREATE_ENUM_TYPE: _ClassVar[SatOpMigrate.Type]
        ALTER_ADD_COLUMN: _ClassVar[SatOpMigrate.Type]
    CREATE_TABLE: SatOpMigrate.Type
    CREATE_INDEX: SatOpMigrate.Type
    CREATE_ENUM_TYPE: SatOpMigrate.Type
    ALTER_ADD_COLUMN: SatOpMigrate.Type
    class Stmt(_message.Message):
        __slots__ = ("type", "sql")
        TYPE_FIELD_NUMBER: _ClassVar[int]
        SQL_FIELD_NUMBER: _ClassVar[int]
        type: SatOpMigrate.Type
        sql: str
        def __init__(self, type: _Optional[_Union[SatOpMigrate.Type, str]] = ..., sql: _Optional[str] = ...) -> None: ...
    class PgColumnType(_message.Message):
        __slots__ = ("name", "array", "size")
        NAME_FIELD_NUMBER: _ClassVar[int]
        ARRAY_FIELD_NUMBER: _ClassVar[int]
        SIZE_FIELD_NUMBER: _ClassVar[int]
        name: str
        array: _containers.RepeatedScalarFieldContainer[int]
        size: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, name: _Optional[str] = ..., array: _Optional[_Iterable[int]] = ..., size: _Optional[_Iterable[int]] = ...) -> None: ...
    class Column(_message.Message):
        __slots__ = ("name", "sqlite_type", "pg_type")
        NAME_FIELD_NUMBER: _ClassVar[int]
        SQLITE_TYPE_FIELD_NUMBER: _ClassVar[int]
        PG_TYPE_FIELD_NUMBER: _ClassVar[int]
        name: str
        sqlite_type: str
        pg_type: SatOpMigrate.PgColumnType
        def __init__(self, name: _Optional[str] = ..., sqlite_type: _Optional[str] = ..., pg_type: _Optional[_Union[SatOpMigrate.PgColumnType, _Mapping]] = ...) -> None: ...
    class ForeignKey(_message.Message):
        __slots__ = ("fk_cols", "pk_table", "pk_cols")
        FK_COLS_FIELD_NUMBER: _ClassVar[int]
        PK_TABLE_FIELD_NUMBER: _ClassVar[int]
        PK_COLS_FIELD_NUMBER: _ClassVar[int]
        fk_cols: _containers.RepeatedScalarFieldContainer[str]
        pk_table: str
        pk_cols: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, fk_cols: _Optional[_Iterable[str]] = ..., pk_table: _Optional[str] = ..., pk_cols: _Optional[_Iterable[str]] = ...) -> None: ...
    class Table(_message.Message):
        __slots__ = ("name", "columns", "fks", "pks")
        NAME_FIELD_NUMBER: _ClassVar[int]
        COLUMNS_FIELD_NUMBER: _ClassVar[int]
        FKS_FIELD_NUMBER: _ClassVar[int]
        PKS_FIELD_NUMBER: _ClassVar[int]
        name: str
        columns: _containers.RepeatedCompositeFieldContainer[SatOpMigrate.Column]
        fks: _containers.RepeatedCompositeFieldContainer[SatOpMigrate.ForeignKey]
        pks: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[SatOpMigrate.Column, _Mapping]]] = ..., fks: _Optional[_Iterable[_Union[SatOpMigrate.ForeignKey, _Mapping]]] = ..., pks: _Optional[_Iterable[str]] = ...) -> None: ...
    class EnumType(_message.Message):
        __slots__ = ("name", "values")
        NAME_FIELD_NUMBER: _ClassVar[int]
        VALUES_FIELD_NUMBER: _ClassVar[int]
        name: str
        values: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STMTS_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ENUM_TYPE_FIELD_NUMBER: _ClassVar[int]
    version: str
    stmts: _containers.RepeatedCompositeFieldContainer[SatOpMigrate.Stmt]
    table: SatOpMigrate.Table
    enum_type: SatOpMigrate.EnumType
    def __init__(self, version: _Optional[str] = ..., stmts: _Optional[_Iterable[_Union[SatOpMigrate.Stmt, _Mapping]]] = ..., table: _Optional[_Union[SatOpMigrate.Table, _Mapping]] = ..., enum_type: _Optional[_Union[SatOpMigrate.EnumType, _Mapping]] = ...) -> None: ...

class SatSubsReq(_message.Message):
    __slots__ = ("subscription_id", "shape_requests")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    SHAPE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    shape_requests: _containers.RepeatedCompositeFieldContainer[SatShapeReq]
    def __init__(self, subscription_id: _Optional[str] = ..., shape_requests: _Optional[_Iterable[_Union[SatShapeReq, _Mapping]]] = ...) -> None: ...

class SatSubsResp(_message.Message):
    __slots__ = ("subscription_id", "err")
    class SatSubsError(_message.Message):
        __slots__ = ("code", "message", "shape_request_error")
        class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            CODE_UNSPECIFIED: _ClassVar[SatSubsResp.SatSubsError.Code]
            SUBSCRIPTION_ID_ALREADY_EXISTS: _ClassVar[SatSubsResp.SatSubsError.Code]
            SHAPE_REQUEST_ERROR: _ClassVar[SatSubsResp.SatSubsError.Code]
        CODE_UNSPECIFIED: SatSubsResp.SatSubsError.Code
        SUBSCRIPTION_ID_ALREADY_EXISTS: SatSubsResp.SatSubsError.Code
        SHAPE_REQUEST_ERROR: SatSubsResp.SatSubsError.Code
        class ShapeReqError(_message.Message):
            __slots__ = ("code", "message", "request_id")
            class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
                __slots__ = ()
                CODE_UNSPECIFIED: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
                TABLE_NOT_FOUND: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
                REFERENTIAL_INTEGRITY_VIOLATION: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
                EMPTY_SHAPE_DEFINITION: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
                DUPLICATE_TABLE_IN_SHAPE_DEFINITION: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
                INVALID_WHERE_CLAUSE: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
                INVALID_INCLUDE_TREE: _ClassVar[SatSubsResp.SatSubsError.ShapeReqError.Code]
            CODE_UNSPECIFIED: SatSubsResp.SatSubsError.ShapeReqError.Code
            TABLE_NOT_FOUND: SatSubsResp.SatSubsError.ShapeReqError.Code
            REFERENTIAL_INTEGRITY_VIOLATION: SatSubsResp.SatSubsError.ShapeReqError.Code
            EMPTY_SHAPE_DEFINITION: SatSubsResp.SatSubsError.ShapeReqError.Code
            DUPLICATE_TABLE_IN_SHAPE_DEFINITION: SatSubsResp.SatSubsError.ShapeReqError.Code
            INVALID_WHERE_CLAUSE: SatSubsResp.SatSubsError.ShapeReqError.Code
            INVALID_INCLUDE_TREE: SatSubsResp.SatSubsError.ShapeReqError.Code
            CODE_FIELD_NUMBER: _ClassVar[int]
            MESSAGE_FIELD_NUMBER: _ClassVar[int]
            REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
            code: SatSubsResp.SatSubsError.ShapeReqError.Code
            message: str
            request_id: str
            def __init__(self, code: _Optional[_Union[SatSubsResp.SatSubsError.ShapeReqError.Code, str]] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        SHAPE_REQUEST_ERROR_FIELD_NUMBER: _ClassVar[int]
        code: SatSubsResp.SatSubsError.Code
        message: str
        shape_request_error: _containers.RepeatedCompositeFieldContainer[SatSubsResp.SatSubsError.ShapeReqError]
        def __init__(self, code: _Optional[_Union[SatSubsResp.SatSubsError.Code, str]] = ..., message: _Optional[str] = ..., shape_request_error: _Optional[_Iterable[_Union[SatSubsResp.SatSubsError.ShapeReqError, _Mapping]]] = ...) -> None: ...
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    ERR_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    err: SatSubsResp.SatSubsError
    def __init__(self, subscription_id: _Optional[str] = ..., err: _Optional[_Union[SatSubsResp.SatSubsError, _Mapping]] = ...) -> None: ...

class SatUnsubsReq(_message.Message):
    __slots__ = ("subscription_ids",)
    SUBSCRIPTION_IDS_FIELD_NUMBER: _ClassVar[int]
    subscription_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subscription_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SatUnsubsResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SatShapeReq(_message.Message):
    __slots__ = ("request_id", "shape_definition")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SHAPE_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    shape_definition: SatShapeDef
    def __init__(self, request_id: _Optional[str] = ..., shape_definition: _Optional[_Union[SatShapeDef, _Mapping]] = ...) -> None: ...

class SatShapeDef(_message.Message):
    __slots__ = ("selects",)
    class Relation(_message.Message):
        __slots__ = ("foreign_key", "select")
        FOREIGN_KEY_FIELD_NUMBER: _ClassVar[int]
        SELECT_FIELD_NUMBER: _ClassVar[int]
        foreign_key: _containers.RepeatedScalarFieldContainer[str]
        select: SatShapeDef.Select
        def __init__(self, foreign_key: _Optional[_Iterable[str]] = ..., select: _Optional[_Union[SatShapeDef.Select, _Mapping]] = ...) -> None: ...
    class Select(_message.Message):
        __slots__ = ("tablename", "where", "include")
        TABLENAME_FIELD_NUMBER: _ClassVar[int]
        WHERE_FIELD_NUMBER: _ClassVar[int]
        INCLUDE_FIELD_NUMBER: _ClassVar[int]
        tablename: str
        where: str
        include: _containers.RepeatedCompositeFieldContainer[SatShapeDef.Relation]
        def __init__(self, tablename: _Optional[str] = ..., where: _Optional[str] = ..., include: _Optional[_Iterable[_Union[SatShapeDef.Relation, _Mapping]]] = ...) -> None: ...
    SELECTS_FIELD_NUMBER: _ClassVar[int]
    selects: _containers.RepeatedCompositeFieldContainer[SatShapeDef.Select]
    def __init__(self, selects: _Optional[_Iterable[_Union[SatShapeDef.Select, _Mapping]]] = ...) -> None: ...

class SatSubsDataError(_message.Message):
    __slots__ = ("code", "message", "subscription_id", "shape_request_error")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CODE_UNSPECIFIED: _ClassVar[SatSubsDataError.Code]
        SHAPE_DELIVERY_ERROR: _ClassVar[SatSubsDataError.Code]
    CODE_UNSPECIFIED: SatSubsDataError.Code
    SHAPE_DELIVERY_ERROR: SatSubsDataError.Code
    class ShapeReqError(_message.Message):
        __slots__ = ("code", "message", "request_id")
        class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            CODE_UNSPECIFIED: _ClassVar[SatSubsDataError.ShapeReqError.Code]
            SHAPE_SIZE_LIMIT_EXCEEDED: _ClassVar[SatSubsDataError.ShapeReqError.Code]
        CODE_UNSPECIFIED: SatSubsDataError.ShapeReqError.Code
        SHAPE_SIZE_LIMIT_EXCEEDED: SatSubsDataError.ShapeReqError.Code
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
        code: SatSubsDataError.ShapeReqError.Code
        message: str
        request_id: str
        def __init__(self, code: _Optional[_Union[SatSubsDataError.ShapeReqError.Code, str]] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    SHAPE_REQUEST_ERROR_FIELD_NUMBER: _ClassVar[int]
    code: SatSubsDataError.Code
    message: str
    subscription_id: str
    shape_request_error: _containers.RepeatedCompositeFieldContainer[SatSubsDataError.ShapeReqError]
    def __init__(self, code: _Optional[_Union[SatSubsDataError.Code, str]] = ..., message: _Optional[str] = ..., subscription_id: _Optional[str] = ..., shape_request_error: _Optional[_Iterable[_Union[SatSubsDataError.ShapeReqError, _Mapping]]] = ...) -> None: ...

class SatSubsDataBegin(_message.Message):
    __slots__ = ("subscription_id", "lsn")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    lsn: bytes
    def __init__(self, subscription_id: _Optional[str] = ..., lsn: _Optional[bytes] = ...) -> None: ...

class SatSubsDataEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SatUnsubsDataBegin(_message.Message):
    __slots__ = ("subscription_ids", "lsn")
    SUBSCRIPTION_IDS_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    subscription_ids: _containers.RepeatedScalarFieldContainer[str]
    lsn: bytes
    def __init__(self, subscription_ids: _Optional[_Iterable[str]] = ..., lsn: _Optional[bytes] = ...) -> None: ...

class SatUnsubsDataEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SatShapeDataBegin(_message.Message):
    __slots__ = ("request_id", "uuid")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    uuid: str
    def __init__(self, request_id: _Optional[str] = ..., uuid: _Optional[str] = ...) -> None: ...

class SatShapeDataEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ElectricctlCaughtUpReq(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ElectricctlCaughtUpResp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
