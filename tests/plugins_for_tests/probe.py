"""Test plugin ``probe``: one protocol extension exercising every path of the runtime.

Loaded by ``[plugins] modules = ["probe"]`` with ``tests/plugins_for_tests`` on the path.
Message types (all named ``probe.<verb>``):

* ``probe.echo`` (sync) and ``probe.async_echo`` (coroutine): answer ``text`` and ``n`` back,
  with the sender the handler saw;
* ``probe.bad_reply``: answers a body its own ``reply_fields`` refuse;
* ``probe.refuse``: raises a DynamoError (``InvalidRequest`` or ``Unavailable``);
* ``probe.crash``: raises a plain exception (a plugin bug);
* ``probe.slow``: sleeps ``seconds`` before answering;
* ``probe.ask``: calls ``type`` with ``body`` on ``peer`` through ``NodeAPI.call``;
* ``probe.tell``: sends a one-way ``probe.note`` to ``peer`` through ``NodeAPI.send``
  (with ``text``, or with ``body`` as given, even one the peer refuses);
* ``probe.note``: records the note it got; ``probe.notes`` lists them.

Options (``[extensions.probe]``): ``tick`` / ``tock`` (seconds) add an async / a sync
periodic task; ``tick_sleep`` makes each run last that long; ``fail_every`` makes every
k-th run raise. Per-node state is kept in :data:`STATES` (by node name, the latest build
wins), so in-process tests can look at it directly.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from dynamo_core.hookspecs import (
    Field,
    InvalidRequest,
    MessageType,
    NodeAPI,
    PeriodicTask,
    ProtocolExtension,
    Request,
    Unavailable,
    anything,
    hookimpl,
    integer,
    of_type,
    text,
)

NAME = "probe"

#: node name -> the state of the probe extension built for it last
STATES: dict[str, Probe] = {}

TEXT = Field(text(200))
NUMBER = Field(of_type(int, float, what="a number of seconds"))
MAP = Field(of_type(dict, what="a map"))
ECHO_FIELDS = {"text": TEXT, "n": Field(integer(0, 10), required=False)}
ECHO_REPLY = {"text": TEXT, "n": Field(integer(0, 10), required=False),
              "sender": Field(text(256), required=False)}


class Probe:
    def __init__(self, node: NodeAPI) -> None:
        self.node = node
        options = dict(node.options(NAME))
        self.tick = options.pop("tick", None)
        self.tock = options.pop("tock", None)
        self.tick_sleep = options.pop("tick_sleep", 0.0)
        self.fail_every = options.pop("fail_every", 0)
        if options:
            raise ValueError(f"[extensions.{NAME}] unknown option(s): {', '.join(options)}")
        for name in ("tick", "tock"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"[extensions.{NAME}] {name} must be seconds, got {value!r}")
        #: one entry per periodic run: (task, start, end, background slots active, failed)
        self.runs: list[tuple[str, float, float, int, bool]] = []
        #: runs in progress, and runs that started while another run of the same task ran
        self.running: Counter[str] = Counter()
        self.overlaps: Counter[str] = Counter()
        self.notes: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ handlers

    def echo(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        return {**request.body, "sender": request.sender}

    async def async_echo(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        await asyncio.sleep(0.01)
        return {**request.body, "sender": request.sender}

    def bad_reply(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        return {"count": "many"}

    def refuse(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        if request.body.get("kind") == "unavailable":
            raise Unavailable("probe.refuse: nothing is reachable today")
        raise InvalidRequest("probe.refuse: this request is refused on purpose")

    def crash(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        raise RuntimeError("probe.crash blew up on purpose")

    async def slow(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        await asyncio.sleep(request.body["seconds"])
        return {"slept": request.body["seconds"]}

    async def ask(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        b = request.body
        reply = await node.call(b["peer"], b["type"], b.get("body") or {}, timeout=2.0)
        return {"reply": reply}

    def tell(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        body = request.body.get("body") or {"text": request.body["text"]}
        node.send(request.body["peer"], f"{NAME}.note", body)
        return {}

    def note(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        self.notes.append({"text": request.body["text"], "sender": request.sender})
        return {"noted": True}

    def list_notes(self, node: NodeAPI, request: Request) -> Mapping[str, Any]:
        return {"notes": list(self.notes)}

    # ------------------------------------------------------------------ tasks

    def _begin(self, task: str) -> tuple[float, int, int]:
        self.running[task] += 1
        if self.running[task] > 1:
            self.overlaps[task] += 1
        active = self.node.stats()["background"]["active"]
        return time.monotonic(), active, len(self.runs) + 1

    def _end(self, task: str, start: float, active: int, number: int) -> None:
        self.running[task] -= 1
        failed = bool(self.fail_every) and number % self.fail_every == 0
        self.runs.append((task, start, time.monotonic(), active, failed))
        if failed:
            raise RuntimeError(f"probe task run {number} failed on purpose")

    async def run_tick(self, node: NodeAPI) -> None:
        start, active, number = self._begin("tick")
        try:
            if self.tick_sleep:
                await asyncio.sleep(self.tick_sleep)
        finally:
            self._end("tick", start, active, number)

    def run_tock(self, node: NodeAPI) -> None:
        start, active, number = self._begin("tock")
        self._end("tock", start, active, number)


def build(node: NodeAPI) -> ProtocolExtension:
    probe = STATES[node.name] = Probe(node)
    m = f"{NAME}."
    messages = [
        MessageType(m + "echo", probe.echo, ECHO_FIELDS, ECHO_REPLY),
        MessageType(m + "async_echo", probe.async_echo, ECHO_FIELDS, ECHO_REPLY),
        MessageType(m + "bad_reply", probe.bad_reply,
                    reply_fields={"count": Field(integer(0, 10))}),
        MessageType(m + "refuse", probe.refuse, {"kind": Field(text(20), required=False)}),
        MessageType(m + "crash", probe.crash),
        MessageType(m + "slow", probe.slow, {"seconds": NUMBER}, {"slept": NUMBER}),
        MessageType(m + "ask", probe.ask,
                    {"peer": TEXT, "type": TEXT, "body": Field(anything, required=False)},
                    {"reply": MAP}),
        MessageType(m + "tell", probe.tell, {"peer": TEXT, "text": TEXT,
                                             "body": Field(anything, required=False)}),
        MessageType(m + "note", probe.note, {"text": TEXT},
                    {"noted": Field(of_type(bool, what="a boolean"))}),
        MessageType(m + "notes", probe.list_notes,
                    reply_fields={"notes": Field(of_type(list, what="a list"))}),
    ]
    tasks = []
    if probe.tick is not None:
        tasks.append(PeriodicTask("tick", probe.tick, probe.run_tick))
    if probe.tock is not None:
        tasks.append(PeriodicTask("tock", probe.tock, probe.run_tock))
    return ProtocolExtension(messages=messages, tasks=tasks)


@hookimpl
def dynamo_protocol_extensions() -> Mapping[str, Any]:
    return {NAME: build}
