"""The founding document's `Service` namespace, loaded on first use."""
from __future__ import annotations

from servicefactory.api import handle
from servicefactory.service import ServiceBase, endpoint, policy


class API:
    """`Service.API`: the decorators that expose a service over HTTP/JSON."""

    endpoint = staticmethod(endpoint)
    handle = staticmethod(handle)


class Service:
    """`Service.base`, `Service.API.endpoint`, `Service.API.handle`, `Service.policy`."""

    base = ServiceBase
    API = API
    policy = staticmethod(policy)
