"""Configuration: one TOML file, every setting with a default, every mistake named.

Unknown sections and keys are errors rather than silently ignored: a typo in ``[cluster]``
should not quietly leave a bucket at the wrong quorum.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .access import CLIENT_ROLES
from .address import AddressError, parse, split_host_port
from .errors import ConfigError
from .overload import OverloadConfig
from .wire import DEFAULT_MAX_MESSAGE_BYTES, MAX_BUCKET_CHARS, is_bucket_name

MAX_REPLICAS = 64


@dataclass(frozen=True)
class BucketConfig:
    """Quorum and resolution settings of one bucket."""

    name: str
    n: int
    r: int
    w: int
    resolver: str | None = None
    #: only home nodes count toward R and W (no stand-ins), like Riak's pr/pw
    strict: bool = False


@dataclass(frozen=True)
class SecuritySettings:
    """The ``[security]`` section: key files, paths resolved against the config file's
    directory. The keys themselves are read when a node starts (see ``security``)."""

    #: the secret key file every node listens with (clients connect with its public half)
    cluster_key: str
    #: this node's own secret key file, with which it connects to its peers; None: the
    #: cluster key, whose public half then counts as a peer's
    node_key: str | None = None
    #: public key files, or directories of them, of the nodes allowed as peers
    peers: tuple[str, ...] = ()
    #: role -> public key files, or directories of them, of the clients with that role
    clients: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    n: int = 3
    r: int = 2
    w: int = 2
    #: Seconds a coordinator waits for replicas before it reports the quorum unmet.
    request_timeout: float = 2.0
    #: Seconds between two gossip rounds of a node.
    gossip_interval: float = 1.0
    #: A peer not heard from for this long is sent a ping (its heartbeat, and the probe
    #: that tells a node marked down that it is back).
    heartbeat_interval: float = 0.5
    #: [handoff] hints a stand-in keeps for absent homes
    handoff_max_hints: int = 100_000
    handoff_max_bytes: int = 256 * 1024 * 1024
    handoff_max_age: float = 3600.0
    handoff_interval: float = 1.0
    handoff_batch: int = 64
    #: [anti_entropy] Merkle exchanges: seconds between two, and tree depth
    ae_interval: float = 0.5
    ae_depth: int = 6
    #: [background] admission control of handoff, anti-entropy and repair (paper 6.5)
    bg_rate: float = 200.0
    bg_burst: int = 50
    bg_max_concurrent: int = 4
    bg_latency_target: float = 0.05
    #: [tombstones] seconds a tombstone is kept after every home holds it; longer than
    #: handoff_max_age, so no delayed hint can bring a reaped key back
    tombstone_grace: float = 7200.0
    max_clock_entries: int = 10
    max_siblings: int = 100
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_pending_requests: int = 10_000
    capacity: int = 1
    #: [node] advertise: the address peers and clients are told, when it is not the one
    #: the node listens on (``--advertise`` overrides it)
    advertise: str | None = None
    storage: Mapping[str, Any] = field(default_factory=lambda: {"engine": "diskcache"})
    failure_detector: Mapping[str, Any] = field(
        default_factory=lambda: {"plugin": "phi-accrual", "threshold": 8.0})
    partitioning: Mapping[str, Any] = field(
        default_factory=lambda: {"strategy": "strategy-3"})
    buckets: Mapping[str, BucketConfig] = field(default_factory=dict)
    plugin_modules: tuple[str, ...] = ()
    #: [extensions.<name>] tables: each protocol extension's own options
    extensions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: [security]: CURVE keys and roles; None: plain sockets, anyone may do anything
    security: SecuritySettings | None = None
    #: [overload] and [admission]: what a node refuses at once (see overload.py)
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    #: [metrics] listen: (host, port) where the node serves Prometheus metrics (the
    #: built-in ``prometheus`` plugin does); None: no metrics endpoint
    metrics_listen: tuple[str, int] | None = None

    def bucket(self, name: str) -> BucketConfig:
        """A bucket's settings; buckets not in the file use the cluster's quorum."""
        return self.buckets.get(name) or BucketConfig(name, self.n, self.r, self.w)


# ---------------------------------------------------------------------- loading

_SECTIONS = {"cluster", "node", "storage", "failure_detector", "partitioning", "buckets",
             "plugins", "limits", "handoff", "anti_entropy", "background", "tombstones",
             "extensions", "security", "overload", "admission", "metrics"}
_CLUSTER_KEYS = {"n", "r", "w", "request_timeout", "gossip_interval", "heartbeat_interval"}
#: section -> TOML key -> Config field, for the plain numeric settings
_NUMERIC = {
    "handoff": {"max_hints": "handoff_max_hints", "max_bytes": "handoff_max_bytes",
                "max_age": "handoff_max_age", "interval": "handoff_interval",
                "batch": "handoff_batch"},
    "anti_entropy": {"interval": "ae_interval", "depth": "ae_depth"},
    "background": {"rate": "bg_rate", "burst": "bg_burst", "max_concurrent": "bg_max_concurrent",
                   "latency_target": "bg_latency_target"},
    "tombstones": {"grace": "tombstone_grace"},
}
_INT_RANGES = {"handoff_max_hints": (1, 100_000_000), "handoff_max_bytes": (1024, 1 << 40),
               "handoff_batch": (1, 10_000), "ae_depth": (1, 16), "bg_burst": (1, 100_000),
               "bg_max_concurrent": (1, 1024)}
_LIMIT_KEYS = {"max_clock_entries", "max_siblings", "max_message_bytes", "max_pending_requests"}


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over``'s settings on top of ``base``'s, table by table, as a second TOML file
    would override the first (a test's or a simulation's overrides of a base config)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(path: str | Path | None) -> Config:
    """Read a TOML file (or nothing: all defaults)."""
    if path is None:
        return from_mapping({})
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes before it parses them
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text "
                          f"(byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return from_mapping(data, source=str(path), base_dir=Path(path).parent)


def from_mapping(data: Mapping[str, Any], source: str = "config",
                 base_dir: str | Path | None = None) -> Config:
    """The settings of ``data``; relative paths in it are taken from ``base_dir`` (the
    config file's directory), or the working directory."""
    _no_unknown(data, _SECTIONS, source)
    cluster = _table(data, "cluster", source)
    _no_unknown(cluster, _CLUSTER_KEYS, f"{source} [cluster]")
    limits = _table(data, "limits", source)
    _no_unknown(limits, _LIMIT_KEYS, f"{source} [limits]")
    node = _table(data, "node", source)
    _no_unknown(node, {"capacity", "advertise"}, f"{source} [node]")
    defaults = Config()
    n, r, w = (_int(cluster, k, getattr(defaults, k), 1, MAX_REPLICAS, "cluster") for k in "nrw")
    _check_quorum(n, r, w, "[cluster]")
    config = Config(
        n=n, r=r, w=w,
        request_timeout=_number(cluster, "request_timeout", defaults.request_timeout, "cluster"),
        gossip_interval=_number(cluster, "gossip_interval", defaults.gossip_interval, "cluster"),
        heartbeat_interval=_number(cluster, "heartbeat_interval", defaults.heartbeat_interval,
                                   "cluster"),
        max_clock_entries=_int(limits, "max_clock_entries", defaults.max_clock_entries, 1, 1000,
                               "limits"),
        max_siblings=_int(limits, "max_siblings", defaults.max_siblings, 1, 1000, "limits"),
        max_message_bytes=_int(limits, "max_message_bytes", defaults.max_message_bytes,
                               64 * 1024, 1 << 30, "limits"),
        max_pending_requests=_int(limits, "max_pending_requests",
                                  defaults.max_pending_requests, 1, 10_000_000, "limits"),
        capacity=_int(node, "capacity", 1, 1, 1024, "node"),
        advertise=_advertise(node, source),
        storage={**defaults.storage, **_table(data, "storage", source)},
        failure_detector={**defaults.failure_detector, **_table(data, "failure_detector", source)},
        partitioning={**defaults.partitioning, **_table(data, "partitioning", source)},
        plugin_modules=_plugin_modules(data, source),
        extensions=_extensions(data, source),
        security=_security(data, source, Path(base_dir or ".")),
        overload=_overload(data, source),
        metrics_listen=_metrics_listen(data, source),
    )
    config = replace(config, **_numeric_sections(data, defaults, source))
    if config.tombstone_grace <= config.handoff_max_age:
        raise ConfigError(f"[tombstones] grace ({config.tombstone_grace:g}s) must exceed "
                          f"[handoff] max_age ({config.handoff_max_age:g}s), or a late hint "
                          f"could bring a reaped key back")
    buckets = {name: _bucket(name, spec, config, source)
               for name, spec in _table(data, "buckets", source).items()}
    return replace(config, buckets=buckets)


def _numeric_sections(data: Mapping[str, Any], defaults: Config,
                      source: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, keys in _NUMERIC.items():
        table = _table(data, section, source)
        _no_unknown(table, set(keys), f"{source} [{section}]")
        for key, attr in keys.items():
            default = getattr(defaults, attr)
            if attr in _INT_RANGES:
                values[attr] = _int(table, key, default, *_INT_RANGES[attr], section)
            elif attr == "bg_rate":
                values[attr] = _number(table, key, default, section, 1e9, "a rate per second")
            else:
                values[attr] = _number(table, key, default, section, high=1e9)
    return values


def _bucket(name: str, spec: Any, config: Config, source: str) -> BucketConfig:
    where = f"[buckets.{name}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{source} {where} must be a table")
    if not is_bucket_name(name) or len(name) > MAX_BUCKET_CHARS:
        raise ConfigError(f"{source} {where}: a bucket name is 1 to {MAX_BUCKET_CHARS} "
                          f"letters, digits, '_', '.' or '-'")
    _no_unknown(spec, {"n", "r", "w", "resolver", "strict"}, f"{source} {where}")
    n = _int(spec, "n", config.n, 1, MAX_REPLICAS, f"buckets.{name}")
    r = _int(spec, "r", min(config.r, n), 1, MAX_REPLICAS, f"buckets.{name}")
    w = _int(spec, "w", min(config.w, n), 1, MAX_REPLICAS, f"buckets.{name}")
    _check_quorum(n, r, w, where)
    resolver = spec.get("resolver")
    if resolver is not None and (not isinstance(resolver, str) or not resolver):
        raise ConfigError(f"{where} resolver must be a plugin name (text)")
    strict = spec.get("strict", False)
    if not isinstance(strict, bool):
        raise ConfigError(f"{where} strict must be true or false, got {strict!r}")
    return BucketConfig(name, n, r, w, resolver, strict)


def _check_quorum(n: int, r: int, w: int, where: str) -> None:
    if r > n or w > n:
        raise ConfigError(f"{where}: r={r} and w={w} must not exceed n={n}")


def _plugin_modules(data: Mapping[str, Any], source: str) -> tuple[str, ...]:
    plugins = _table(data, "plugins", source)
    _no_unknown(plugins, {"modules"}, f"{source} [plugins]")
    modules = plugins.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError("[plugins] modules must be a list of import paths (text)")
    return tuple(modules)


def _extensions(data: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The options of each protocol extension; the node checks the names are installed."""
    tables = _table(data, "extensions", source)
    for name, options in tables.items():
        if not isinstance(options, dict):
            raise ConfigError(f"{source} [extensions.{name}] must be a table of the "
                              f"extension's options")
    return tables


def _security(data: Mapping[str, Any], source: str, base: Path) -> SecuritySettings | None:
    table = _table(data, "security", source)
    if not table:
        return None
    where = f"{source} [security]"
    _no_unknown(table, {"cluster_key", "node_key", "peers", "clients"}, where)
    if "cluster_key" not in table:
        raise ConfigError(f"{where}: cluster_key (the secret key file every node listens "
                          f"with) is required; `dynamo keys generate cluster` writes one")
    clients = _table(table, "clients", where)
    _no_unknown(clients, set(CLIENT_ROLES), f"{source} [security.clients] (roles)")
    return SecuritySettings(
        cluster_key=_paths(table, "cluster_key", where, base, single=True)[0],
        node_key=_paths(table, "node_key", where, base, single=True)[0]
        if "node_key" in table else None,
        peers=_paths(table, "peers", where, base),
        clients={role: _paths(clients, role, f"{source} [security.clients]", base)
                 for role in CLIENT_ROLES if role in clients})


def _paths(table: Mapping[str, Any], key: str, where: str, base: Path,
           single: bool = False) -> tuple[str, ...]:
    """A path, or (unless ``single``) a list of them, resolved against ``base``."""
    value = table.get(key, [])
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items) \
            or (single and len(items) != 1):
        what = "a file path (text)" if single else "a path or a list of paths (text)"
        raise ConfigError(f"{where}: {key} must be {what}, got {value!r}")
    return tuple(str(base / Path(v).expanduser()) for v in items)


def _advertise(node: Mapping[str, Any], source: str) -> str | None:
    """[node] advertise, checked as an address here; whether it may be advertised (not an
    unspecified one, a name that resolves) is the node's check at start."""
    value = node.get("advertise")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{source} [node] advertise must be an address (text), got {value!r}")
    try:
        parse(value)
    except AddressError as exc:
        raise ConfigError(f"{source} [node] advertise: {exc}") from None
    return value


def _metrics_listen(data: Mapping[str, Any], source: str) -> tuple[str, int] | None:
    """[metrics] listen, ``HOST:PORT``: whether it can be bound is the plugin's check when
    the node starts."""
    table = _table(data, "metrics", source)
    _no_unknown(table, {"listen"}, f"{source} [metrics]")
    value = table.get("listen")
    if value is None:
        return None
    return metrics_address(value, f"{source} [metrics] listen")


def metrics_address(value: Any, where: str) -> tuple[str, int]:
    """A metrics endpoint, ``HOST:PORT`` (the config's, or ``dynamo node --metrics``)."""
    if not isinstance(value, str):
        raise ConfigError(f'{where} must be "HOST:PORT" (text), like "127.0.0.1:9101", '
                          f"got {value!r}")
    try:
        endpoint = split_host_port(value)
    except ValueError as exc:
        raise ConfigError(f'{where} {value!r} is not HOST:PORT like "127.0.0.1:9101" '
                          f"({exc})") from None
    if endpoint.host in ("", "*"):
        raise ConfigError(f'{where} {value!r} names no host: give one, or "0.0.0.0:PORT" '
                          f'("[::]:PORT") to listen on every interface')
    return endpoint.host, endpoint.port


def _overload(data: Mapping[str, Any], source: str) -> OverloadConfig:
    """``[overload]`` (standing queue, requests in flight) and ``[admission]`` (per client)."""
    overload = _table(data, "overload", source)
    _no_unknown(overload, {"queue_target", "queue_interval", "max_in_flight"},
                f"{source} [overload]")
    admission = _table(data, "admission", source)
    _no_unknown(admission, {"client_rate", "client_burst", "max_clients"},
                f"{source} [admission]")
    d = OverloadConfig()
    target = _number(overload, "queue_target", d.queue_target, "overload", 60)
    interval = _number(overload, "queue_interval", max(target, d.queue_interval), "overload",
                       60)
    if interval < target:
        raise ConfigError(f"[overload] queue_interval ({interval:g}s) must be at least "
                          f"queue_target ({target:g}s)")
    return OverloadConfig(
        queue_target=target, queue_interval=interval,
        max_in_flight=_int(overload, "max_in_flight", d.max_in_flight, 1, 10_000_000,
                           "overload"),
        client_rate=_number(admission, "client_rate", d.client_rate, "admission", 1e9,
                            "a rate per second", zero=True),
        client_burst=_int(admission, "client_burst", d.client_burst, 1, 1_000_000,
                          "admission"),
        max_clients=_int(admission, "max_clients", d.max_clients, 1, 10_000_000, "admission"))


def _table(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return value


def _no_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(allowed))}")


def _int(table: Mapping[str, Any], key: str, default: int, low: int, high: int,
         section: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"[{section}] {key} must be an integer from {low} to {high}, "
                          f"got {value!r}")
    return value


def _number(table: Mapping[str, Any], key: str, default: float, section: str,
            high: float = 3600, what: str = "a number of seconds", zero: bool = False) -> float:
    """A number in (0, high], or [0, high] with ``zero`` (where 0 turns a feature off)."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (value >= 0 if zero else value > 0) or not value <= high:
        low = "from 0 (off)" if zero else "above 0"
        raise ConfigError(f"[{section}] {key} must be {what} {low} and at most {high:g}, "
                          f"got {value!r}")
    return float(value)
