"""``prometheus``: each node's figures as Prometheus metrics over HTTP.

Off unless the config says where to listen (one address per node)::

    [metrics]
    listen = "127.0.0.1:9101"

The node then answers ``GET /metrics`` (any path) with the Prometheus text format (or
OpenMetrics, as the scraper asks). What it serves is listed in ``docs/metrics.md``; the
counting and the metric families are in :mod:`.prometheus_metrics`.

Built from the public hooks alone, registered through the ``dynamo`` entry-point group like
any plugin:

* ``dynamo_protocol_extensions`` offers an extension with no messages and no tasks: its
  factory, called as the node is built, is the one place a plugin may refuse a start. It
  binds the port there, so a port in use stops ``dynamo node`` with one line, before the
  node joins anyone;
* ``dynamo_node_started`` starts serving; ``dynamo_node_stopping`` stops the server and
  frees the port;
* ``dynamo_request_completed`` counts client requests; everything else comes from the
  node's status document (``node.stats()``), read on each scrape.

**Threads.** The HTTP server runs on threads of its own (one accepting, one per scrape), so
a scrape never blocks the node's event loop, and the node's state is only ever read on that
loop. A scrape asks the loop for a snapshot (``call_soon_threadsafe``): between two messages
the loop builds the status document (a fresh document, shared with nothing) and copies the
request counts, and hands both back through a future; the scrape's thread turns them into
metric families and text. The request counts are plain objects the loop alone touches: no
lock on the request path, and no half-updated histogram in a scrape. A loop that does not
answer within :data:`SNAPSHOT_WAIT` seconds (a wedged node) gets the scrape a 503, not stale
figures: Prometheus then marks the target down, which is the truth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.metrics_core import Metric

from dynamo_core.hookspecs import (
    ExtensionFactory,
    NodeAPI,
    ProtocolExtension,
    RequestEvent,
    hookimpl,
)

from .prometheus_metrics import RequestCounts, RequestStats, families

NAME = "prometheus"
#: Seconds a scrape waits for the node's loop to hand over a snapshot.
SNAPSHOT_WAIT = 5.0
#: Seconds between two looks of the accepting thread at a request to stop: what a node's
#: stop may wait for the port to be free.
POLL_INTERVAL = 0.05

Snapshot = tuple[Mapping[str, Any], RequestCounts]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class NodeSilent(Exception):
    """The node's loop handed no snapshot over: it has stopped, or did not answer in time."""


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per scrape, daemonic: a scrape in progress never holds the process up."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access-log line per scrape on the node's stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Exporter:
    """One node's metrics endpoint: bound when the node is built, served while it runs.

    It is the collector of its own registry (with the process's CPU, memory and file
    descriptors beside it), so each node in a process serves its own figures.
    """

    def __init__(self, node: NodeAPI, listen: tuple[str, int]) -> None:
        self.requests = RequestStats()
        # Weak: exporters are kept in a mapping weakly keyed by their node, which a strong
        # reference from here would keep alive for good.
        self._node = weakref.ref(node)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        registry = CollectorRegistry()
        registry.register(self)
        ProcessCollector(registry=registry)
        self._server = _bind(listen, _unavailable_as_503(make_wsgi_app(registry)))
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ on the node's loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
            name=f"metrics {self._server.server_address[1]}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port (a scrape already waiting gets a 503)."""
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()  # waits for the accepting thread, not for scrapes
            self._thread.join()
        self._server.server_close()

    def _take(self, future: concurrent.futures.Future[Snapshot]) -> None:
        node = self._node()
        if self._closed or node is None:
            future.set_exception(NodeSilent("the node has stopped"))
            return
        try:
            future.set_result((node.stats(), self.requests.copy()))
        except Exception as exc:  # noqa: BLE001 - the scrape reports it, the node serves on
            future.set_exception(exc)

    # ------------------------------------------------------------------ on a scrape's thread

    def collect(self) -> Iterator[Metric]:
        status, requests = self._snapshot()
        return families(status, requests)

    def _snapshot(self) -> Snapshot:
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()
        if self._loop is None:
            raise NodeSilent("the node has not started")
        try:
            self._loop.call_soon_threadsafe(self._take, future)
        except RuntimeError:  # the loop is closed
            raise NodeSilent("the node has stopped") from None
        try:
            return future.result(SNAPSHOT_WAIT)
        except TimeoutError:
            raise NodeSilent(f"the node did not answer within {SNAPSHOT_WAIT:g}s") from None


def _bind(listen: tuple[str, int], app: WsgiApp) -> _Server:
    """A server bound to ``listen``, not serving yet; ValueError saying why it cannot be."""
    host, port = listen
    server_class = _Server6 if ":" in host else _Server
    try:
        server = server_class((host, port), _QuietHandler)
    except OSError as exc:  # in use, not an address of this machine, a name that fails
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ValueError(f"[metrics] listen {shown}: cannot listen there: "
                         f"{exc.strerror or exc}") from None
    server.set_app(app)
    return server


def _unavailable_as_503(app: WsgiApp) -> WsgiApp:
    """``app``, answering 503 with the reason when the node hands over no snapshot.

    prometheus_client's app collects before it starts its response, so this can still
    start one of its own.
    """
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except NodeSilent as exc:
            start_response("503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{exc}\n".encode()]
    return serve


# ====================================================================== hooks

#: node -> its exporter, while it has one; weak, so a node never started takes its own along
_exporters: weakref.WeakKeyDictionary[NodeAPI, Exporter] = weakref.WeakKeyDictionary()


def build(node: NodeAPI) -> ProtocolExtension:
    """The extension's factory: binds the node's metrics port when the config names one."""
    if node.metrics_listen is not None:
        _exporters[node] = Exporter(node, node.metrics_listen)
    return ProtocolExtension()


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, ExtensionFactory]:
    return {NAME: build}


@hookimpl
def dynamo_node_started(node: NodeAPI) -> None:
    if (exporter := _exporters.get(node)) is not None:
        exporter.start(asyncio.get_running_loop())


@hookimpl
def dynamo_request_completed(node: NodeAPI, event: RequestEvent) -> None:
    if (exporter := _exporters.get(node)) is not None:
        exporter.requests.observe(event)


@hookimpl
def dynamo_node_stopping(node: NodeAPI) -> None:
    if (exporter := _exporters.pop(node, None)) is not None:
        exporter.close()
