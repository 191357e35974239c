"""Which registry backend a process uses: chosen here, and nowhere else.

$SERVICEFACTORY_REGISTRY names it: `local` (the default: the state directory on this host) or
`etcd://host:2379[,host2:2379][/prefix]` (etcd v3, shared by many hosts; needs the `etcd` extra;
`etcds://` over TLS).
The registry's interface is `registry.Registry`; this module alone knows the backends' classes.
"""
from __future__ import annotations

import os

from servicefactory.errors import StateError

TYPE_CHECKING = False  # typing is for type checkers only: importing it would slow `servicefactory perform`
if TYPE_CHECKING:
    from servicefactory.registry.base import Registry

#: the environment variable that names the backend
REGISTRY_ENV = "SERVICEFACTORY_REGISTRY"
#: every backend, by the name $SERVICEFACTORY_REGISTRY gives it
BACKENDS = ("local", "etcd://host:2379", "etcds://host:2379")


def default_registry() -> "Registry":
    """The registry this process uses unless told otherwise ($SERVICEFACTORY_REGISTRY, else local)."""
    kind = os.environ.get(REGISTRY_ENV, "").strip() or "local"
    if kind == "local":
        from servicefactory.registry.local import LocalRegistry
        return LocalRegistry()
    if kind.startswith(("etcd://", "etcds://")):
        import importlib.util

        # found, not imported: a command that only reads never imports them (registry/_etcdwire.py)
        for needed in ("etcd3gw", "requests"):
            if importlib.util.find_spec(needed) is None:
                raise StateError(f"the etcd registry needs the etcd extra ({needed} is missing): "
                                 f"pip install 'servicefactory[etcd]'")
        from servicefactory.registry.etcd import EtcdRegistry
        return EtcdRegistry(kind)
    raise StateError(f"unknown registry backend {kind!r} in ${REGISTRY_ENV}: use one of {', '.join(BACKENDS)}")
