"""The plugin manager of one node (or one client): loading plugins and picking them by name.

There is no module-level manager: each node builds its own, so two nodes in one process (or
a test) never share plugin state. Built-ins arrive through the ``dynamo`` entry-point group
exactly like third-party plugins, then the modules a config names are imported and registered.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import pluggy

from . import hookspecs
from .errors import ConfigError


def make_plugin_manager(modules: Sequence[str] = ()) -> pluggy.PluginManager:
    """A new manager: entry-point plugins, then the modules a config names.

    A module named in the config that an installed distribution already registered is
    not registered twice. A function named like a hook that is not one (``dynamo_resolver``
    for ``dynamo_resolvers``) is a ConfigError, not a plugin that silently never runs.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"[plugins] modules: cannot import {name!r}: {exc}") from None
        if pm.is_registered(module) or pm.has_plugin(name):
            continue
        pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {exc.plugin_name!r}: {exc}") from None
    return pm


class Registry:
    """The named implementations every registered plugin offers, one mapping per kind."""

    KINDS = {
        "storage engine": "dynamo_storage_engines",
        "resolver": "dynamo_resolvers",
        "partition strategy": "dynamo_partition_strategies",
        "failure detector": "dynamo_failure_detectors",
        "protocol extension": "dynamo_protocol_extensions",
    }

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._by_kind = {kind: self._collect(kind, hook) for kind, hook in self.KINDS.items()}

    def _collect(self, kind: str, hook_name: str) -> dict[str, tuple[Any, str]]:
        """name -> (implementation, plugin name); a name offered twice is a config error."""
        found: dict[str, tuple[Any, str]] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            offered: Mapping[str, Any] = impl.function() or {}
            for name, obj in offered.items():
                if name in found:
                    raise ConfigError(f"{kind} {name!r} is offered by both {found[name][1]} "
                                      f"and {impl.plugin_name}")
                found[name] = (obj, impl.plugin_name)
        return found

    #: Hooks a plugin implements to hear about events rather than to offer named parts.
    EVENT_HOOKS = ("dynamo_node_started", "dynamo_node_stopping", "dynamo_membership_changed",
                   "dynamo_request_completed")

    def listeners(self, hook_name: str) -> list[str]:
        """The plugins implementing an event hook, in the order they are called."""
        return [impl.plugin_name for impl in getattr(self.pm.hook, hook_name).get_hookimpls()]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def source(self, kind: str, name: str) -> str:
        return self._by_kind[kind][name][1]

    def pick(self, kind: str, name: str) -> Any:
        """The implementation called ``name``, or a ConfigError listing the choices."""
        try:
            return self._by_kind[kind][name][0]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none installed"
            raise ConfigError(f"unknown {kind} {name!r}; available: {available}") from None

    def storage_engine(self, name: str) -> hookspecs.StorageFactory:
        return self.pick("storage engine", name)

    def resolver(self, name: str) -> hookspecs.Resolver:
        return self.pick("resolver", name)

    def partition_strategy(self, name: str) -> hookspecs.PartitionStrategy:
        return self.pick("partition strategy", name)

    def failure_detector(self, name: str) -> hookspecs.FailureDetectorFactory:
        return self.pick("failure detector", name)
