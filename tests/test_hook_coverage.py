"""Every hook of the public plugin API is documented, called and listed.

A hook added to ``dynamo_core/hookspecs.py`` that no running node calls, without a section in
the plugin author's guide, or without a place in ``dynamo plugins`` fails here, by name.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dynamo_core import hookspecs
from dynamo_core.api import NodeAPI, PeerView, RequestEvent
from dynamo_core.errors import ConfigError
from dynamo_core.hookspecs import hookimpl
from dynamo_core.plugins import Registry, make_plugin_manager
from dynamo_core.sim import SimCluster

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"


def hook_names() -> list[str]:
    """Every hook specification of the public API, by name."""
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, obj in vars(hookspecs).items()
                  if inspect.isfunction(obj) and hasattr(obj, marker))


HOOKS = hook_names()


def test_the_api_declares_hooks_and_every_one_is_named_dynamo_star() -> None:
    assert len(HOOKS) >= 9, HOOKS
    assert all(name.startswith("dynamo_") for name in HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring_and_type_hints(hook: str) -> None:
    spec = getattr(hookspecs, hook)
    assert (spec.__doc__ or "").strip(), f"{hook} has no docstring"
    hints = inspect.get_annotations(spec)
    assert "return" in hints, f"{hook} has no return annotation"
    for param in inspect.signature(spec).parameters:
        assert param in hints, f"{hook}: parameter {param} has no type hint"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_the_plugin_guide(hook: str) -> None:
    assert GUIDE.exists(), f"{GUIDE.relative_to(ROOT)} (the plugin author's guide) is missing"
    assert re.search(rf"\b{hook}\b", GUIDE.read_text()), (
        f"{hook} is not documented in {GUIDE.relative_to(ROOT)}")


class Recorder:
    """A plugin implementing every hook, counting the calls a running node makes."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def _saw(self, hook: str) -> dict[str, Any]:
        self.calls[hook] += 1
        return {}

    @hookimpl
    def dynamo_storage_engines(self) -> dict[str, Any]:
        return self._saw("dynamo_storage_engines")

    @hookimpl
    def dynamo_resolvers(self) -> dict[str, Any]:
        return self._saw("dynamo_resolvers")

    @hookimpl
    def dynamo_partition_strategies(self) -> dict[str, Any]:
        return self._saw("dynamo_partition_strategies")

    @hookimpl
    def dynamo_failure_detectors(self) -> dict[str, Any]:
        return self._saw("dynamo_failure_detectors")

    @hookimpl
    def dynamo_protocol_extensions(self) -> dict[str, Any]:
        return self._saw("dynamo_protocol_extensions")

    @hookimpl
    def dynamo_node_started(self, node: NodeAPI) -> None:
        self._saw("dynamo_node_started")

    @hookimpl
    def dynamo_node_stopping(self, node: NodeAPI) -> None:
        self._saw("dynamo_node_stopping")

    @hookimpl
    def dynamo_membership_changed(self, node: NodeAPI, members: Sequence[PeerView]) -> None:
        self._saw("dynamo_membership_changed")

    @hookimpl
    def dynamo_request_completed(self, node: NodeAPI, event: RequestEvent) -> None:
        self._saw("dynamo_request_completed")


def test_the_recorder_implements_every_hook() -> None:
    """A new hook makes this fail until the recorder below, and so a running node in the
    next test, covers it."""
    implemented = {name for name in dir(Recorder) if name.startswith("dynamo_")}
    assert implemented == set(HOOKS)


def test_a_running_node_calls_every_hook() -> None:
    """Not a mention in a file: real nodes (the production core, simulated) calling each
    hook through the same code that calls third-party plugins."""
    recorder = Recorder()
    cluster = SimCluster(2, seed=3, plugins=[recorder])
    try:
        cluster.start()
        client = cluster.client()
        client.put("k", "v")
        assert client.get("k").values == ["v"]
        cluster.add_node("n3")  # a membership change every node hears of
        cluster.run(5.0)
        cluster.stop("n1")
    finally:
        cluster.close()
    missing = [hook for hook in HOOKS if not recorder.calls[hook]]
    assert not missing, f"no node called {missing}"


def test_dynamo_plugins_lists_every_hook() -> None:
    """A registry kind or an event hook: nothing a plugin implements is invisible."""
    listed = set(Registry.KINDS.values()) | set(Registry.EVENT_HOOKS)
    assert listed == set(HOOKS)


def test_the_plugin_manager_knows_every_hook() -> None:
    pm = make_plugin_manager()
    for hook in HOOKS:
        assert getattr(pm.hook, hook).spec is not None, hook


class _Named:
    """A plugin noting, in a shared list, when its started hook runs."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name = name
        self.order = order

    @hookimpl
    def dynamo_node_started(self, node: NodeAPI) -> None:
        self.order.append(self.name)


class _First(_Named):
    @hookimpl(tryfirst=True)
    def dynamo_node_started(self, node: NodeAPI) -> None:
        self.order.append(self.name)


class _Last(_Named):
    @hookimpl(trylast=True)
    def dynamo_node_started(self, node: NodeAPI) -> None:
        self.order.append(self.name)


def test_hooks_run_in_pluggys_order_tryfirst_first_then_the_last_registered() -> None:
    order: list[str] = []
    plugins = [_Last("last", order), _Named("a", order), _First("first", order),
               _Named("b", order)]
    cluster = SimCluster(1, seed=1, plugins=plugins)
    try:
        cluster.start(settle=0.1)
    finally:
        cluster.close()
    assert order == ["first", "b", "a", "last"]


class _Wrapper:
    @hookimpl(wrapper=True)
    def dynamo_request_completed(self, node: NodeAPI, event: RequestEvent) -> Any:
        return (yield)


def test_a_wrapper_implementation_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="dynamo_request_completed is a wrapper; dynamo "
                                          "calls every implementation on its own"):
        make_plugin_manager(extra=[_Wrapper()])
