"""The ``dynamo`` command line: run nodes and clusters, read and write keys, look inside.

Every command that prints data takes ``--json`` (one JSON document on stdout; contexts as
base64 text that ``--context`` accepts back). Exit status 0 on success; otherwise a one-line
reason on stderr and status 1 (the store said no) or 2 (the command line was wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from . import config as config_mod
from . import transfers, wire
from .address import AddressError, parse
from .client import DEFAULT_BUCKET, Client
from .errors import ConfigError, DynamoError, Unavailable
from .progress import ProgressLine
from .versions import context_from_text, context_text

DEFAULT_NODE = os.environ.get("DYNAMO_NODE", "tcp://127.0.0.1:7101")
DEFAULT_BASE_PORT = 7100
DEFAULT_DATA_DIR = "dynamo-data"


#: How a node enters, leaves and comes back (``dynamo node --help``, and the README).
NODE_LIFECYCLE = """\
how a node enters and leaves the cluster:
  start it with --seed ADDR (any member): it learns the cluster and joins it, taking its
  share of the ring at once (status 'joining' while it fills its ranges, then 'up').
  Without --seed it is a cluster of its own; `dynamo join --node ADDR --seed ADDR` brings
  such a node, or one that left or was removed, into a cluster.
  Ctrl-C (SIGTERM) is a temporary absence: it stays on the ring, its peers keep its writes
  as hints and hand them over when it is back.
  `dynamo leave --node ADDR` leaves for good (its ranges are handed off first);
  `dynamo remove NAME` takes a dead node that will not come back off the ring.

restarting a node with its data:
  run the same command again: the same --name, --data-dir, --listen and --advertise (and
  --config); the seeds may be any members. It takes back its place on the ring.
"""


class UsageError(Exception):
    """A wrong argument the parser could not catch (bad JSON value, bad address)."""


# ====================================================================== output


def _jsonable(value: Any) -> Any:
    """JSON cannot hold bytes or sets; show them in a form a reader can recognise."""
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _dump(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


# ====================================================================== data commands


def _client(args: argparse.Namespace) -> Client:
    _check_reachable(args.node, args.timeout)
    return Client(args.node, timeout=args.timeout, key=args.key_file or None,
                  server_key=args.server_key_file or None)


def _check_reachable(address: str, timeout: float) -> None:
    """Fail at once, saying why, when nothing could answer at ``address``.

    A ZeroMQ socket connects in the background and retries for ever, so a misspelt host or
    a port nobody listens on would look like a slow node: the whole timeout, then "no
    answer". Resolving the host (over IPv4, as ZeroMQ does, unless it is written as an IPv6
    address) and one plain TCP connection tell those apart first. The connection closes
    before ZeroMQ's greeting: a node sees nothing of it, whether it runs with security or not.
    """
    endpoint = parse(address)
    family = socket.AF_INET6 if endpoint.ipv6 else socket.AF_INET
    try:
        found = socket.getaddrinfo(endpoint.host, endpoint.port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unavailable(f"{address}: unknown host {endpoint.host!r} ({exc.strerror})") \
            from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(found[0][4])
        except ConnectionRefusedError:
            raise Unavailable(f"{address}: connection refused (no node listens there; is it "
                              f"running, and is the port right?)") from None
        except TimeoutError:
            raise Unavailable(f"{address}: no answer within {timeout:g}s (the TCP connection "
                              f"was not accepted: the host is down or a firewall drops it)") \
                from None
        except OSError as exc:
            raise Unavailable(f"{address}: {exc.strerror or exc}") from None


def cmd_get(args: argparse.Namespace) -> str:
    with _client(args) as c:
        result = c.get(args.key, args.r, bucket=args.bucket)
    doc = {"key": args.key, "bucket": args.bucket, "values": result.values,
           "context": context_text(result.context)}
    if args.json:
        return _dump(doc)
    lines = [f"values: {_dump(result.values)}" if result.values else "values: [] (not found)"]
    if len(result.values) > 1:
        lines[0] += f"  ({len(result.values)} siblings)"
    return "\n".join([*lines, f"context: {doc['context']}"])


def _parse_value(text: str, what: str = "VALUE") -> Any:
    """JSON typed on the command line, or read from stdin (``-``) or a file (``@FILE``):
    an argument list holds about 128 KB at most, a value may be larger."""
    try:
        return json.loads(_argument_text(text, what))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                         f"{exc.colno}); quote strings, e.g. '\"book\"'") from None


def _argument_text(text: str, what: str) -> str:
    """The text itself; stdin's for ``-``; the file's for ``@FILE`` (neither is JSON)."""
    if text == "-":
        return sys.stdin.read()
    if not text.startswith("@"):
        return text
    try:
        return Path(text[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{what} {text}: cannot read {text[1:]!r} ({reason})") from None


def cmd_put(args: argparse.Namespace) -> str:
    value = _parse_value(args.value)
    with _client(args) as c:
        context = c.put(args.key, value, args.context, args.w, bucket=args.bucket)
    text = context_text(context)
    return _dump({"context": text}) if args.json else f"ok\ncontext: {text}"


def cmd_delete(args: argparse.Namespace) -> str:
    with _client(args) as c:
        context = c.delete(args.key, args.context, args.w, bucket=args.bucket)
    text = context_text(context)
    return _dump({"context": text}) if args.json else f"deleted\ncontext: {text}"


def cmd_request(args: argparse.Namespace) -> str:
    """Send a protocol extension's message; print its reply body as JSON."""
    body = _parse_value(args.body, "BODY")
    if not isinstance(body, dict):
        raise UsageError(f"BODY must be a JSON object, got {type(body).__name__}")
    with _client(args) as c:
        reply = c.request(args.type, body, args.node)
    return _dump(reply)


# ====================================================================== operator commands


def cmd_status(args: argparse.Namespace) -> str:
    from .console import render, status_view
    with _client(args) as c:
        status = c.status(args.node)
    if args.json:
        return _dump(status)
    return render(status_view(status, time.time()), _terminal())


def _terminal() -> bool:
    """Colours and live views only for a person at a terminal: a pipe gets plain lines."""
    return sys.stdout.isatty()


def cmd_top(args: argparse.Namespace) -> str:
    """Every node's own counters, refreshed: live on a terminal, a table per refresh (or
    just one, ``--once``) anywhere else."""
    from .console import render
    with _client(args) as c:
        addresses = sorted(m["address"] for m in c.status(args.node)["members"]
                           if m["status"] != "removed")
        frames = _top_frames(c, addresses, args.interval)
        if args.once:
            next(frames)  # the rates need a first reading to count from
            return render(next(frames), _terminal())
        if _terminal():
            from rich.live import Live
            with Live(next(frames), auto_refresh=False) as live:
                for frame in frames:
                    live.update(frame, refresh=True)
        for frame in frames:  # until Ctrl-C
            print(render(frame, False) + "\n", flush=True)
    return ""


def _top_frames(client: Client, addresses: list[str], interval: float) -> Iterator[Any]:
    """A view of every node each ``interval`` seconds (the first one at once)."""
    from .console import top_view
    previous: dict[str, dict[str, Any] | str] = {}
    taken = time.monotonic()
    while True:
        current: dict[str, dict[str, Any] | str] = {}
        for address in addresses:
            try:
                current[address] = client.status(address)
            except DynamoError as exc:
                current[address] = str(exc)
        now = time.monotonic()
        yield top_view(current, previous, now - taken, time.strftime("%H:%M:%S"))
        previous, taken = current, now
        time.sleep(interval)


def cmd_ring(args: argparse.Namespace) -> str:
    from .console import draw_ring, render, ring_document, ring_view
    if args.png:
        _require_matplotlib("--png")
    with _client(args) as c:
        doc = ring_document(c.ring(args.node))
    if args.png:
        draw_ring(doc, args.png, f"the ring as {args.node} sees it")
    if args.json:
        return _dump(doc)
    saved = f"\nring drawn in {args.png}" if args.png else ""
    return render(ring_view(doc, args.node), _terminal()) + saved


def _require_matplotlib(option: str) -> None:
    from .bench import EXTRA
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"{option} needs matplotlib, which is not installed: {EXTRA}")


def cmd_inspect(args: argparse.Namespace) -> str:
    with _client(args) as c:
        info = c.inspect(args.key, args.node, bucket=args.bucket)
    if args.json:
        return _dump(info)
    lines = [f"{info['key']!r} in bucket {info['bucket']!r} on {info['node']}: "
             f"{len(info['versions'])} version(s)"]
    for v in info["versions"]:
        clock = ", ".join(f"{e[0]}:{e[1]}" for e in v["clock"])
        what = "TOMBSTONE" if v["tombstone"] else _dump(v["value"])
        lines.append(f"  {what}  clock [{clock}]  ts {v['timestamp']:.3f}")
    lines.append(f"hints held for this key: {len(info['hints'])}")
    return "\n".join(lines)


def cmd_preflist(args: argparse.Namespace) -> str:
    with _client(args) as c:
        info = c.preflist(args.key, bucket=args.bucket, node=args.node)
    if args.json:
        return _dump(info)
    rows = [[n["name"], n["address"], n["role"], n["state"]] for n in info["nodes"]]
    return f"{info['key']!r} in bucket {info['bucket']!r} (n={info['n']}), as {info['node']} " \
           f"sees it:\n" + _table(rows, ["NAME", "ADDRESS", "ROLE", "STATE"])


def cmd_join(args: argparse.Namespace) -> str:
    with _client(args) as c:
        c.join(args.node, args.seed, keep_data=args.keep_data)
    if args.wait:
        return _followed(args, "join", lambda ask, line, deadline: transfers.follow_join(
            ask, args.node, line, deadline), args.wait_timeout)
    return _dump({"joined": args.node, "seed": args.seed}) if args.json else \
        f"{args.node} is joining the cluster of {args.seed}"


def cmd_leave(args: argparse.Namespace) -> str:
    with _client(args) as c:
        c.leave(args.node)
    if args.wait:
        return _followed(args, "leave", lambda ask, line, deadline: transfers.follow_leave(
            ask, args.node, line, deadline), args.wait_timeout)
    return _dump({"leaving": args.node}) if args.json else \
        f"{args.node} is handing its ranges off; it exits when done"


def cmd_remove(args: argparse.Namespace) -> str:
    with _client(args) as c:
        c.remove(args.name, args.node)
    if args.wait:
        return _followed(args, "remove", lambda ask, line, deadline: transfers.follow_remove(
            ask, args.node, args.name, line, deadline), args.wait_timeout)
    return _dump({"removed": args.name}) if args.json else \
        f"{args.name} removed; its ranges are being rebuilt from the other replicas"


def _followed(args: argparse.Namespace, change: str,
              follow: Callable[[transfers.Ask, ProgressLine, float], str],
              seconds: float) -> str:
    """Follow a change to its end, for at most ``seconds``, progress on stderr."""
    line = ProgressLine(f"dynamo {change}")
    deadline = time.monotonic() + seconds
    with Client(args.node, timeout=transfers.ASK_TIMEOUT, key=args.key_file or None,
                server_key=args.server_key_file or None, route=False) as c:
        outcome = follow(lambda address: c.status(node=address), line, deadline)
    line.finish("done")
    return _dump({"done": outcome}) if args.json else outcome


def cmd_plugins(args: argparse.Namespace) -> str:
    from .extensions import check_options
    from .plugins import Registry, make_plugin_manager
    cfg = config_mod.load(args.config)
    registry = Registry(make_plugin_manager(cfg.plugin_modules))
    check_options(cfg.extensions, registry)  # what a node started with this config would
    dists = {name: f"{dist.project_name} {dist.version}"
             for name, dist in _plugin_distributions(registry)}
    def where(plugin: str) -> str:
        return dists.get(plugin, "config [plugins] modules")
    doc = {kind: [{"name": n, "plugin": registry.source(kind, n),
                   "from": where(registry.source(kind, n))}
                  for n in registry.names(kind)] for kind in registry.KINDS}
    # Event hooks (lifecycle, observation): listed under the hook, by plugin.
    for hook in registry.EVENT_HOOKS:
        doc[hook] = [{"name": plugin, "plugin": plugin, "from": where(plugin)}
                     for plugin in registry.listeners(hook)]
    if args.json:
        return _dump(doc)
    rows = [[kind, e["name"], e["plugin"], e["from"]] for kind, es in doc.items() for e in es]
    return _table(rows, ["KIND", "NAME", "MODULE", "FROM"])


def cmd_keys(args: argparse.Namespace) -> str:
    from .security import generate, load_public
    written = []
    for name in args.names:
        public, secret = generate(args.dir, name)
        written.append({"name": name, "public_key": load_public(public).decode("ascii"),
                        "public_file": str(public), "secret_file": str(secret)})
    if args.json:
        return _dump(written)
    return "\n".join(f"{w['name']}: public {w['public_file']}, secret {w['secret_file']} "
                     f"(keep it secret), key {w['public_key']}" for w in written)


def _plugin_distributions(registry: Any) -> list[tuple[str, Any]]:
    return [(registry.pm.get_name(plugin), dist)
            for plugin, dist in registry.pm.list_plugin_distinfo()]


# ====================================================================== running nodes


class JsonLines(logging.Formatter):
    """One JSON object a line, for log collectors (journald, Loki, jq): the time in UTC,
    the level, the logger, the message (a node's core starts it with the node's name), and
    the traceback when there is one, so a record never spans two lines."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(
                   timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


LOG_FORMATS = {"text": lambda: logging.Formatter(
                   "%(asctime)s %(levelname)s %(name)s: %(message)s"),
               "json": JsonLines}


def _setup_logging(level: str, log_format: str = "text", log_file: str | None = None) -> None:
    """Logs go to stderr, or appended to ``log_file`` (which a service manager or a
    ``dynamo cluster`` run need not keep a terminal for)."""
    handler = logging.StreamHandler(sys.stderr) if log_file is None else \
        logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(LOG_FORMATS[log_format]())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def cmd_node(args: argparse.Namespace) -> str:
    from .node import Node, run_loop, run_node
    _setup_logging(args.log_level, args.log_format, args.log_file)
    cfg = config_mod.load(args.config)
    if args.metrics is not None:
        try:
            listen = config_mod.metrics_address(args.metrics, "--metrics")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        cfg = dataclasses.replace(cfg, metrics_listen=listen)
    data_dir = args.data_dir or os.path.join(DEFAULT_DATA_DIR, args.name)
    try:
        node = Node(args.name, args.listen, config=cfg, data_dir=data_dir,
                    seeds=tuple(args.seed), keep_stale_data=args.keep_data,
                    advertise=args.advertise)
    except AddressError as exc:
        raise UsageError(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_node(node, stop)

    run_loop(main())
    return ""


def cmd_cluster(args: argparse.Namespace) -> str:
    from .cluster import run_cluster
    return run_cluster(args.nodes, args.base_port, args.data_dir, args.config, args.log_level,
                       args.log_format, restart=not args.no_restart)


def cmd_wait(args: argparse.Namespace) -> str:
    """Block until the cluster of ``--node`` is ready: for scripts and CI."""
    from .cluster import wait_ready
    with Client(args.node, timeout=min(args.timeout, 2.0), key=args.key_file or None,
                server_key=args.server_key_file or None) as c:
        problem = wait_ready(c, args.node, args.nodes, args.timeout)
    if problem is not None:
        raise DynamoError(f"not ready after {args.timeout:g}s: {problem}")
    if args.drained:
        return _followed(args, "wait", lambda ask, line, deadline: transfers.follow_handoff(
            ask, args.node, line, deadline), args.timeout)
    return _dump({"ready": True, "node": args.node}) if args.json else "ready"


def cmd_bench(args: argparse.Namespace) -> str:
    from .bench import BenchUsageError, run_bench
    try:
        return run_bench(args)
    except BenchUsageError as exc:
        raise UsageError(str(exc)) from None


def cmd_sim(args: argparse.Namespace) -> str:
    from .sim import commands
    try:
        options = commands.options_from(
            args.seed, args.seeds, nodes=args.nodes, clients=args.clients, ops=args.ops,
            faults=commands.parse_faults(args.faults), keys=args.keys, think=args.think,
            engine=args.engine, json=args.json,
            shrink=not args.no_shrink, jobs=args.jobs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    status = commands.run(options)
    if status:
        raise SimulationFailed()
    return ""


class SimulationFailed(Exception):
    """``dynamo sim`` found a broken invariant (already reported on stdout)."""


# ====================================================================== parser


def _address(text: str) -> str:
    try:
        parse(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _checked(field: wire.Field) -> Callable[[str], str]:
    """A key or bucket name as the wire schema takes it: refused here, as a usage error,
    rather than by the node as an invalid request."""
    def check(text: str) -> str:
        try:
            field.check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def _message_type(text: str) -> str:
    extension, dot, verb = text.partition(".")
    if not (extension and dot and verb):
        raise argparse.ArgumentTypeError(f"{text!r} is not '<extension>.<verb>', e.g. "
                                         f"keycount.total")
    return text


def _context(text: str) -> bytes:
    try:
        return context_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get one line on stderr, as every other failure does."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _wait_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="follow the change to its end, with its progress on stderr")
    p.add_argument("--wait-timeout", type=_positive(float), default=600.0, metavar="S",
                   help="with --wait: give up after S seconds (exit 1; default 600)")


def _key_arguments(p: argparse.ArgumentParser) -> None:
    """How a client command authenticates to a cluster that runs with security."""
    p.add_argument("--key", dest="key_file", default=os.environ.get("DYNAMO_KEY"),
                   metavar="FILE",
                   help="this client's secret key file, for a cluster with security "
                        "(default $DYNAMO_KEY)")
    p.add_argument("--server-key", dest="server_key_file",
                   default=os.environ.get("DYNAMO_SERVER_KEY"), metavar="FILE",
                   help="the cluster's public key file (default $DYNAMO_SERVER_KEY, or "
                        "cluster.key beside --key)")


def _log_arguments(p: argparse.ArgumentParser) -> None:
    """A node's log: at info it tells of peers going down and coming back, and of members
    joining and leaving; json writes one object a line."""
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the nodes' log level (default info)")
    p.add_argument("--log-format", default="text", choices=sorted(LOG_FORMATS),
                   help="text lines (default) or one JSON object a line")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynamo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], str], help_text: str, *,
                client: bool = True, json_out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn, parser=p)
        if client:
            p.add_argument("--node", type=_address, default=DEFAULT_NODE,
                           help=f"node to ask (default {DEFAULT_NODE}, or $DYNAMO_NODE)")
            p.add_argument("--timeout", type=_positive(float), default=5.0,
                           help="seconds to wait for the answer (default 5)")
            _key_arguments(p)
        if json_out:
            p.add_argument("--json", action="store_true", help="print one JSON document")
        return p

    def keyed(p: argparse.ArgumentParser) -> None:
        p.add_argument("key", metavar="KEY", type=_checked(wire.KEY))
        p.add_argument("--bucket", default=DEFAULT_BUCKET, type=_checked(wire.BUCKET),
                       help="bucket (default 'default')")

    p = command("node", cmd_node, "run one node in the foreground", client=False, json_out=False)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = NODE_LIFECYCLE
    p.add_argument("--name", required=True)
    p.add_argument("--listen", required=True, type=_address,
                   help="address to bind, e.g. tcp://0.0.0.0:7609 for every interface "
                        "(IPv6: tcp://[::]:7609)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (overrides [metrics] listen)")
    p.add_argument("--advertise", type=_address, metavar="tcp://HOST:PORT",
                   help="address peers and clients are told to use (an IP address or a host "
                        "name); required when --listen is on every interface; default: "
                        "[node] advertise of the config, else the --listen address")
    p.add_argument("--seed", action="append", default=[], type=_address,
                   help="address of a node to learn the cluster from (repeatable)")
    p.add_argument("--data-dir", help=f"where this node keeps its data "
                                      f"(default {DEFAULT_DATA_DIR}/NAME)")
    p.add_argument("--config", help="TOML configuration file")
    _log_arguments(p)
    p.add_argument("--log-file", metavar="FILE",
                   help="append the log to FILE instead of writing it to stderr")
    p.add_argument("--keep-data", action="store_true",
                   help="keep replicas held from before an absence longer than the tombstone "
                        "grace (by default they are dropped: they could resurrect deletes)")

    p = command("cluster", cmd_cluster, "run a local cluster of node processes on loopback",
                client=False, json_out=False)
    p.add_argument("--nodes", type=_positive(int), default=3)
    p.add_argument("--base-port", type=_positive(int), default=DEFAULT_BASE_PORT,
                   help=f"node i listens on base-port + i (default {DEFAULT_BASE_PORT})")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"node i keeps its data in DIR/n<i> (default {DEFAULT_DATA_DIR})")
    p.add_argument("--config", help="TOML configuration file for every node")
    _log_arguments(p)
    p.add_argument("--no-restart", action="store_true",
                   help="leave a node that dies dead (by default it is restarted, with "
                        "backoff, on its data)")

    p = command("wait", cmd_wait, "wait until a cluster is ready (exit 0), or say why it is "
                                  "not after --timeout seconds (exit 1)", client=False)
    p.add_argument("--node", type=_address, default=DEFAULT_NODE,
                   help=f"node whose cluster to wait for (default {DEFAULT_NODE}, or "
                        f"$DYNAMO_NODE)")
    p.add_argument("--nodes", type=_positive(int),
                   help="wait until at least this many members are up on the ring, and ready")
    p.add_argument("--timeout", type=_positive(float), default=60.0,
                   help="seconds to wait at most (default 60)")
    p.add_argument("--drained", action="store_true",
                   help="then wait until every hint held for an absent node is delivered, "
                        "with the progress on stderr")
    _key_arguments(p)

    p = command("get", cmd_get, "read a key: its values and context")
    keyed(p)
    p.add_argument("--r", type=_positive(int), help="read quorum for this request")

    for name, fn, text in (("put", cmd_put, "write a key (VALUE is JSON, - for stdin, "
                                             "@FILE for a file's)"),
                           ("delete", cmd_delete, "delete a key")):
        p = command(name, fn, text)
        keyed(p)
        if name == "put":
            p.add_argument("value", metavar="VALUE",
                           help="JSON; - reads it from stdin, @FILE from a file")
        p.add_argument("--w", type=_positive(int), help="write quorum for this request")
        p.add_argument("--context", type=_context, help="context printed by a get (base64)")

    p = command("request", cmd_request, "send a protocol extension's message; print the reply")
    p.add_argument("type", metavar="TYPE", type=_message_type,
                   help="message type, '<extension>.<verb>'")
    p.add_argument("body", metavar="BODY", nargs="?", default="{}",
                   help="the message body as a JSON object (default {}); - reads it "
                        "from stdin, @FILE from a file")
    command("status", cmd_status, "membership, ring ownership and counters as a node sees them")
    p = command("top", cmd_top, "every node's counters, refreshed (live on a terminal)",
                json_out=False)
    p.add_argument("--interval", type=_positive(float), default=2.0,
                   help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true",
                   help="print one view (after one interval, for the rates) and exit")
    p = command("ring", cmd_ring, "the ring as a node sees it: each member's ranges and "
                                  "share, as first home and as replica")
    p.add_argument("--png", metavar="FILE", help="also draw the ring, its owners and "
                   "replicas, into FILE (needs matplotlib)")
    p = command("inspect", cmd_inspect, "the versions of KEY in one node's local storage")
    keyed(p)
    p = command("preflist", cmd_preflist, "the preference list of KEY as a node sees it")
    keyed(p)
    p = command("join", cmd_join, "make the node at --node join the cluster of --seed")
    p.add_argument("--seed", type=_address, required=True)
    p.add_argument("--keep-data", action="store_true",
                   help="a node that was removed keeps the replicas it held (by default it "
                        "rejoins empty: they could resurrect deletes)")
    _wait_arguments(p)
    p = command("leave", cmd_leave, "the node at --node hands its ranges off, then exits")
    _wait_arguments(p)
    p = command("remove", cmd_remove, "remove a dead node; its data is rebuilt elsewhere")
    p.add_argument("name", metavar="NAME")
    _wait_arguments(p)
    p = command("keys", cmd_keys, "generate CURVE key pairs for a cluster with security",
                client=False)
    p.add_argument("action", choices=["generate"], help="generate: write NAME.key (public) "
                   "and NAME.key_secret (secret, mode 0600)")
    p.add_argument("names", metavar="NAME", nargs="+",
                   help="key names, e.g. cluster, n1, app, ops")
    p.add_argument("--dir", default="keys", help="where to write them (default ./keys)")

    p = command("plugins", cmd_plugins, "installed plugins of each kind", client=False)
    p.add_argument("--config", help="TOML configuration (its [plugins] modules are loaded)")

    p = command("bench", cmd_bench, "load generator: YCSB workloads a/b/c/f, closed or open "
                                    "loop, latency percentiles against the raw round trip",
                client=False)
    from .bench import add_arguments as bench_arguments
    bench_arguments(p, DEFAULT_NODE, _address)
    _key_arguments(p)

    p = command("sim", cmd_sim, "a seeded, deterministic simulation of a whole cluster, "
                                "with faults, judged by a history checker", client=False)
    p.add_argument("--seed", type=int, help="the seed of one run")
    p.add_argument("--seeds", help="a sweep: a range of seeds like 1-200")
    p.add_argument("--nodes", type=_positive(int), default=5)
    p.add_argument("--clients", type=_positive(int), default=4)
    p.add_argument("--ops", type=_positive(int), default=300,
                   help="client operations in all (default 300)")
    p.add_argument("--faults", default="",
                   help="fault kinds, comma-separated: partition,crash,loss,skew,disk")
    p.add_argument("--keys", type=_positive(int), default=2,
                   help="keys of each kind the clients share (default 2: many collisions)")
    p.add_argument("--think", type=_positive(float), default=5.0,
                   help="mean pause between a client's operations, in ms (default 5)")
    p.add_argument("--engine", choices=["sim-disk", "memory", "diskcache"],
                   help="storage engine (default sim-disk: durable across simulated "
                        "crashes, with injectable disk errors)")
    p.add_argument("--no-shrink", action="store_true",
                   help="on a failure, do not look for a smaller failing run")
    p.add_argument("--jobs", type=_positive(int), default=1,
                   help="seeds simulated at once in a sweep (processes)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # named by the subcommand's parser: "dynamo put: unrecognized arguments"
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        out = args.fn(args)
    except UsageError as exc:
        print(f"dynamo {args.command}: {exc}", file=sys.stderr)
        return 2
    except (DynamoError, ConfigError, OSError) as exc:
        print(f"dynamo {args.command}: {exc}", file=sys.stderr)
        return 1
    except SimulationFailed:
        return 1
    except KeyboardInterrupt:
        return 130
    if out:
        try:
            print(out, flush=True)
        except BrokenPipeError:  # the reader left early (`| head`): nothing went wrong here
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
