"""electricctl's Python client: keep a local SQLite file in sync with an electricctl server.

:class:`SyncClient` is the library (``electricctl sync`` runs it from the command line); the
types in its signatures and the errors it raises are exported here. Its parts:
:mod:`~electricctl.client.sync` (the driver: I/O), :mod:`~electricctl.client.session` (the
protocol's decisions, sans I/O), :mod:`~electricctl.client.wire` (protobuf <-> local changes) and
:mod:`~electricctl.client.store` (the SQLite file: schema, values, oplog, apply).
(The bare protocol client the tests use to poke the server is ``tests/satellite_client.py``.)
"""

from electricctl.client.sync import Status, Subscription, SyncClient, TokenSource
from electricctl.client.values import LocalValue, RemoteChange
from electricctl.errors import (
    AuthenticationFailed,
    ConnectionLost,
    EndpointNotFound,
    SubscriptionRefused,
    SyncError,
    Timeout,
)

__all__ = [
    "AuthenticationFailed",
    "ConnectionLost",
    "EndpointNotFound",
    "LocalValue",
    "RemoteChange",
    "Status",
    "Subscription",
    "SubscriptionRefused",
    "SyncClient",
    "SyncError",
    "Timeout",
    "TokenSource",
]
