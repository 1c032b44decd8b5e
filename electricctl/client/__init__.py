"""electricctl's Python client: keep a local SQLite file in sync with an electricctl server.

:class:`SyncClient` is the library (``electricctl sync`` runs it from the command line).
(The bare protocol client the tests use to poke the server is ``tests/satellite_client.py``.)
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
