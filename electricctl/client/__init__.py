"""electricctl's Python client: keep a local SQLite file in sync with an electricctl server.

:class:`SyncClient` is the library (``electricctl sync`` runs it from the command line);
:mod:`electricctl.client.satellite` is a bare protocol client that the tests use to poke the server.
"""

from electricctl.client.sync import Status, Subscription, SyncClient
from electricctl.errors import AuthenticationFailed, EndpointNotFound, SubscriptionRefused, SyncError

__all__ = [
    "AuthenticationFailed",
    "EndpointNotFound",
    "Status",
    "Subscription",
    "SubscriptionRefused",
    "SyncClient",
    "SyncError",
]
