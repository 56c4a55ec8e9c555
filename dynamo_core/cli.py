"""The ``dynamo`` command line: run nodes and clusters, read and write keys, look inside.

Every command that prints data takes ``--json`` (one JSON document on stdout; contexts as
base64 text that ``--context`` accepts back). Exit status 0 on success; otherwise a one-line
reason on stderr and status 1 (the store said no) or 2 (the command line was wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import config as config_mod
from . import transfers
from .address import AddressError, parse
from .client import DEFAULT_BUCKET, Client
from .errors import ConfigError, DynamoError
from .progress import ProgressLine
from .versions import context_text

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
    return Client(args.node, timeout=args.timeout, key=args.key_file or None,
                  server_key=args.server_key_file or None)


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
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc.msg} at column {exc.colno}); "
                         f"quote strings, e.g. '\"book\"'") from None


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
    with _client(args) as c:
        status = c.status(args.node)
    if args.json:
        return _dump(status)
    now = time.time()
    rows = [[m["name"], m["address"], m["state"], _ago(m.get("since"), now), m["status"],
             m["tokens"], f"{100 * m['ownership']:.1f}%"] for m in status["members"]]
    ae = status.get("anti_entropy", {})
    ov = status.get("overload", {})
    return "\n".join([
        f"node {status['node']} ({status['address']}), engine {status['engine']}, "
        f"failure detector {status.get('failure_detector', '?')}",
        _readiness_line(status),
        f"keys held: {status['keys']}   hints pending: {status['hints_pending']} "
        f"(delivered {status.get('hints_delivered', 0)})   "
        f"open requests: {status['pending_requests']}   read repairs: {status['read_repairs']}",
        f"anti-entropy: {ae.get('exchanges', 0)} exchanges, {ae.get('keys_sent', 0)} keys "
        f"sent, {ae.get('keys_fetched', 0)} fetched, {ae.get('keys_handed_off', 0)} handed "
        f"off, {ae.get('tombstones_reaped', 0)} tombstones reaped",
        f"partitioning: {status.get('partitioning', '?')}"
        + (f" ({status['partitions']} partitions)" if status.get("partitions") else "")
        + f"   extensions: {', '.join(status.get('extensions', [])) or 'none'}"
        f"   plugin errors: {status.get('plugin_errors', 0)}",
        f"overload: {'behind' if ov.get('behind') else 'keeping up'}; refused "
        f"{ov.get('overloaded_refusals', 0)} (standing queue), "
        f"{ov.get('in_flight_refusals', 0)} (requests in flight), "
        f"{ov.get('rate_limited', 0)} (over a client's rate)",
        "", _table(rows, ["NAME", "ADDRESS", "STATE", "SINCE", "STATUS", "TOKENS", "OWNS"]),
        *_status_meanings(status["members"])])


def _readiness_line(status: dict[str, Any]) -> str:
    if status.get("ready"):
        return "ready: true"
    return f"ready: false ({'; '.join(status.get('not_ready', []))})"


def _status_meanings(members: list[dict[str, Any]]) -> list[str]:
    """Below the table: what each STATUS shown means (STATE is this node's opinion of the
    peer's health; STATUS is where the member stands in the cluster)."""
    meanings = {m["status"]: m.get("meaning") for m in members if m.get("meaning")}
    return [f"  {status}: {meaning}" for status, meaning in sorted(meanings.items())]


def _ago(when: float | None, now: float) -> str:
    return "-" if when is None else f"{max(0.0, now - when):.0f}s ago"


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
            ask, args.node, line, deadline))
    return _dump({"joined": args.node, "seed": args.seed}) if args.json else \
        f"{args.node} is joining the cluster of {args.seed}"


def cmd_leave(args: argparse.Namespace) -> str:
    with _client(args) as c:
        c.leave(args.node)
    if args.wait:
        return _followed(args, "leave", lambda ask, line, deadline: transfers.follow_leave(
            ask, args.node, line, deadline))
    return _dump({"leaving": args.node}) if args.json else \
        f"{args.node} is handing its ranges off; it exits when done"


def cmd_remove(args: argparse.Namespace) -> str:
    with _client(args) as c:
        c.remove(args.name, args.node)
    if args.wait:
        return _followed(args, "remove", lambda ask, line, deadline: transfers.follow_remove(
            ask, args.node, args.name, line, deadline))
    return _dump({"removed": args.name}) if args.json else \
        f"{args.name} removed; its ranges are being rebuilt from the other replicas"


def _followed(args: argparse.Namespace, change: str,
              follow: Callable[[transfers.Ask, ProgressLine, float], str]) -> str:
    """Follow a membership change to its end (``--wait``), progress on stderr."""
    line = ProgressLine(f"dynamo {change}")
    deadline = time.monotonic() + args.wait_timeout
    with Client(args.node, timeout=transfers.ASK_TIMEOUT, key=args.key_file or None,
                server_key=args.server_key_file or None, route=False) as c:
        outcome = follow(lambda address: c.status(node=address), line, deadline)
    line.finish("done")
    return _dump({"done": outcome}) if args.json else outcome


def cmd_plugins(args: argparse.Namespace) -> str:
    from .plugins import Registry, make_plugin_manager
    cfg = config_mod.load(args.config)
    registry = Registry(make_plugin_manager(cfg.plugin_modules))
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_node(args: argparse.Namespace) -> str:
    from .node import Node, run_loop, run_node
    _setup_logging(args.log_level)
    cfg = config_mod.load(args.config)
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
                       restart=not args.no_restart)


def cmd_wait(args: argparse.Namespace) -> str:
    """Block until the cluster of ``--node`` is ready: for scripts and CI."""
    from .cluster import wait_ready
    with Client(args.node, timeout=min(args.timeout, 2.0), key=args.key_file or None,
                server_key=args.server_key_file or None) as c:
        problem = wait_ready(c, args.node, args.nodes, args.timeout)
    if problem is not None:
        raise DynamoError(f"not ready after {args.timeout:g}s: {problem}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dynamo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], str], help_text: str, *,
                client: bool = True, json_out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
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
        p.add_argument("key", metavar="KEY")
        p.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket (default 'default')")

    p = command("node", cmd_node, "run one node in the foreground", client=False, json_out=False)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = NODE_LIFECYCLE
    p.add_argument("--name", required=True)
    p.add_argument("--listen", required=True, type=_address,
                   help="address to bind, e.g. tcp://0.0.0.0:7609 for every interface "
                        "(IPv6: tcp://[::]:7609)")
    p.add_argument("--advertise", type=_address, metavar="tcp://HOST:PORT",
                   help="address peers and clients are told to use (an IP address or a host "
                        "name); required when --listen is on every interface; default: "
                        "[node] advertise of the config, else the --listen address")
    p.add_argument("--seed", action="append", default=[], type=_address,
                   help="address of a node to learn the cluster from (repeatable)")
    p.add_argument("--data-dir", help=f"where this node keeps its data "
                                      f"(default {DEFAULT_DATA_DIR}/NAME)")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
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
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"])
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
    _key_arguments(p)

    p = command("get", cmd_get, "read a key: its values and context")
    keyed(p)
    p.add_argument("--r", type=_positive(int), help="read quorum for this request")

    for name, fn, text in (("put", cmd_put, "write a key (VALUE is JSON)"),
                           ("delete", cmd_delete, "delete a key")):
        p = command(name, fn, text)
        keyed(p)
        if name == "put":
            p.add_argument("value", metavar="VALUE")
        p.add_argument("--w", type=_positive(int), help="write quorum for this request")
        p.add_argument("--context", help="context printed by a get (base64)")

    p = command("request", cmd_request, "send a protocol extension's message; print the reply")
    p.add_argument("type", metavar="TYPE", help="message type, '<extension>.<verb>'")
    p.add_argument("body", metavar="BODY", nargs="?", default="{}",
                   help="the message body as a JSON object (default {})")
    command("status", cmd_status, "membership, ring ownership and counters as a node sees them")
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
    args = build_parser().parse_args(argv)
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
