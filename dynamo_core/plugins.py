"""The plugin manager of one node (or one client): loading plugins and picking them by name.

There is no module-level manager: each node builds its own, so two nodes in one process (or
a test) never share plugin state. Built-ins arrive through the ``dynamo`` entry-point group
exactly like third-party plugins, then the modules a config names are imported and registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import pluggy

from . import hookspecs
from .errors import ConfigError


def make_plugin_manager(modules: Sequence[str] = (), extra: Sequence[object] = ()
                        ) -> pluggy.PluginManager:
    """A new manager: entry-point plugins, the modules a config names, then ``extra``
    plugin objects a program hands in (the simulator's disks, a test's recorder).

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
    for plugin in extra:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from None
    _refuse_wrappers(pm)
    return pm


def _refuse_wrappers(pm: pluggy.PluginManager) -> None:
    """A wrapper runs around the other implementations and sees their failures; a node calls
    each implementation on its own, isolated (see :mod:`hookspecs`), so it cannot honour one."""
    for hook_name in [*Registry.KINDS.values(), *Registry.EVENT_HOOKS]:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                raise ConfigError(
                    f"plugin {impl.plugin_name!r}: {hook_name} is a "
                    f"{'wrapper' if impl.wrapper else 'hookwrapper'}; dynamo calls every "
                    f"implementation on its own, so that one plugin's failure never reaches "
                    f"another, and cannot run wrappers: make it a plain implementation "
                    f"(tryfirst/trylast order it)")


def call_order(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    """The implementations of a hook in the order pluggy would call them: ``tryfirst``
    ones first, ``trylast`` ones last, otherwise the plugin registered last first."""
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


class Registry:
    """The named implementations every registered plugin offers, one mapping per kind."""

    KINDS: ClassVar[dict[str, str]] = {
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
        for impl in call_order(self.pm, hook_name):
            offered: Mapping[str, Any] = impl.function() or {}
            for name, obj in offered.items():
                if name in found:
                    first, second = sorted((found[name][1], impl.plugin_name))
                    raise ConfigError(f"{kind} {name!r} is offered by both {first} and "
                                      f"{second}")
                found[name] = (obj, impl.plugin_name)
        return found

    #: Hooks a plugin implements to hear about events rather than to offer named parts.
    EVENT_HOOKS = ("dynamo_node_started", "dynamo_node_stopping", "dynamo_membership_changed",
                   "dynamo_request_completed")

    def listeners(self, hook_name: str) -> list[str]:
        """The plugins implementing an event hook, in the order they are called."""
        return [impl.plugin_name for impl in call_order(self.pm, hook_name)]

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
        return cast(hookspecs.StorageFactory, self.pick("storage engine", name))

    def resolver(self, name: str) -> hookspecs.Resolver:
        return cast(hookspecs.Resolver, self.pick("resolver", name))

    def partition_strategy(self, name: str) -> hookspecs.PartitionStrategy:
        return cast(hookspecs.PartitionStrategy, self.pick("partition strategy", name))

    def failure_detector(self, name: str) -> hookspecs.FailureDetectorFactory:
        return cast(hookspecs.FailureDetectorFactory, self.pick("failure detector", name))
