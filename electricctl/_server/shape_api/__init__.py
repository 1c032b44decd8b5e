"""Electric's current HTTP Shape API (``GET /v1/shape``) and our ``POST /v1/transactions``, served
from the same shape engine as the Satellite protocol (see :mod:`.manager`)."""
