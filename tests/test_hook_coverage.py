"""Every hook of the public plugin API is documented, tested and listed.

A hook added to ``dynamo_core/hookspecs.py`` without a test, without a section in the plugin
author's guide, or without a place in ``dynamo plugins`` fails here, by name.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from dynamo_core import hookspecs
from dynamo_core.plugins import Registry, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
THIS = Path(__file__).resolve()


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


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook: str) -> None:
    using = [path.name for path in sorted((ROOT / "tests").rglob("*.py"))
             if path.resolve() != THIS and re.search(rf"\b{hook}\b", path.read_text())]
    assert using, f"no test mentions {hook}: write one that proves what it does"


def test_dynamo_plugins_lists_every_hook() -> None:
    """A registry kind or an event hook: nothing a plugin implements is invisible."""
    listed = set(Registry.KINDS.values()) | set(Registry.EVENT_HOOKS)
    assert listed == set(HOOKS)


def test_the_plugin_manager_knows_every_hook() -> None:
    pm = make_plugin_manager()
    for hook in HOOKS:
        assert getattr(pm.hook, hook).spec is not None, hook
