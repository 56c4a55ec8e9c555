"""How the code is built, checked: the protocol core does no I/O, dependencies flow one way.

* No module of the protocol core imports ``zmq``, ``asyncio``, ``time``, ``secrets`` or the
  global ``random`` (it may use ``random.Random`` objects handed to it): time and
  randomness come in from the driver, which is what lets the simulator run the very same
  code, seeded.
* The drivers (the asyncio node, the simulator) depend on the core, never the other way.
* Built-in plugins import only the public plugin API (``hookspecs``, ``api``).
* No import cycles among the project's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dynamo_core"
#: Where the core meets the world: sockets, event loops, processes, the terminal, clients.
EDGES = {"node", "transport", "zmq_transport", "security", "client", "cli", "cluster", "bench",
         "progress", "transfers",
         "__init__", "__main__"}
FORBIDDEN = {"zmq", "asyncio", "time", "secrets"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, resolved."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


def _is_module(dotted: str) -> bool:
    target = ROOT.joinpath(*dotted.split("."))
    return target.with_suffix(".py").exists() or (target / "__init__.py").exists()


def _core_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.glob("*.py")) if p.stem not in EDGES]


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.stem)
def test_the_protocol_core_reads_no_clock_opens_no_socket_and_draws_no_global_random(
        path: Path) -> None:
    for module, names in _imports(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {module}"
        if module == "random":
            assert names == ["Random"], f"{path.name} takes {names} from random"
        assert not module.startswith(("dynamo_core.node", "dynamo_core.sim",
                                      "dynamo_core.cli")), \
            f"{path.name} imports the driver module {module}"


def test_the_simulator_drives_the_core_and_the_core_never_imports_it() -> None:
    for path in _core_modules():
        assert not any(m.startswith("dynamo_core.sim") for m, _ in _imports(path)), path.name
    sim_imports = {m for p in (PACKAGE / "sim").glob("*.py") for m, _ in _imports(p)}
    assert "dynamo_core.core" in sim_imports
    assert not any(m.startswith(("zmq", "asyncio", "dynamo_core.node")) for m in sim_imports)


@pytest.mark.parametrize("path", sorted([*(ROOT / "plugins").glob("*.py"),
                                         *(ROOT / "resolvers").glob("*.py")]),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_built_in_plugins_import_only_the_public_plugin_api(path: Path) -> None:
    allowed = {"dynamo_core.hookspecs", "dynamo_core.api", "dynamo_core.errors",
               "dynamo_core.wire"}
    for module, _ in _imports(path):
        if module.startswith("dynamo_core"):
            assert module in allowed, f"{path.name} imports {module}"


def test_there_is_no_import_cycle_among_the_projects_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted([*PACKAGE.rglob("*.py")]):
        name = _module_name(path).removesuffix(".__init__")
        deps = set()
        for module, names in _imports(path):
            if not module.startswith("dynamo_core"):
                continue
            submodules = [f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")]
            # "from . import errors" depends on dynamo_core.errors, not on the package
            deps.update(submodules or [module])
        deps.discard(name)
        graph[name] = deps

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep, stack, done)
        stack.pop()
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [], done)
