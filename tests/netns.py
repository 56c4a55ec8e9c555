"""Network namespaces for partition tests: a switch with hosts on veth pairs, links cut for real.

:class:`Topology` builds, as root with iproute2, one *switch* namespace holding Linux bridges
and ``k`` *host* namespaces. Host ``i`` has one interface, ``eth0`` at ``10.213.S.i/24``, the
other end of whose veth pair (``p<i>``) is a port of a bridge in the switch namespace. Every
device and address lives inside namespaces this module creates, so nothing is routed to or
from the machine's own network, and deleting the namespaces deletes every device with them.
Namespace names carry this process's id and a random suffix, so a crashed earlier run can
never collide with this one.

A partition moves switch ports between bridges: hosts on different bridges no longer reach
each other (their frames are silently lost, as on a real split network), hosts on the same
bridge still do. Healing puts every port back on the first bridge.

:class:`Agent` is a client inside a host namespace: a child process (this file run as a
script) that reads one JSON request per line on stdin, calls :class:`dynamo_core.Client`,
and answers with one JSON line on stdout. The test process itself never leaves its own
namespace.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

IP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


class NetnsUnavailable(Exception):
    """Network namespaces cannot be used here; the message says why."""


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it if the test process goes away (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=IP_TIMEOUT, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can): checked cheaply, no changes."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"creating network namespaces needs root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    return None


class Topology:
    """A switch namespace with bridges, and ``hosts`` host namespaces on veth pairs."""

    def __init__(self, hosts: int, port: int = 7100) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("between 1 and 200 hosts")
        self.hosts = hosts
        self.port = port
        self.tag = f"dynpt{os.getpid()}x{secrets.token_hex(3)}"
        # The subnet exists only on devices inside our namespaces; the random third octet
        # just makes addresses of two runs easy to tell apart in logs.
        self.subnet_octet = 1 + secrets.randbelow(254)
        self.switch = f"{self.tag}-sw"
        self._created: list[str] = []
        self._bridges: set[str] = set()

    # ------------------------------------------------------------------ names

    def ns(self, i: int) -> str:
        """The namespace of host ``i`` (1-based)."""
        return f"{self.tag}-h{i}"

    def ip_of(self, i: int) -> str:
        return f"10.213.{self.subnet_octet}.{i}"

    def address(self, i: int) -> str:
        """The ZeroMQ endpoint a node in host ``i`` listens on."""
        return f"tcp://{self.ip_of(i)}:{self.port}"

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix a command with this to run it inside host ``i``'s namespace."""
        return ["ip", "netns", "exec", self.ns(i)]

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    # ------------------------------------------------------------------ building

    def create(self) -> None:
        """Build everything; raises NetnsUnavailable if the first namespace cannot be made."""
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        reap_stale()
        proc = _ip("netns", "add", self.switch, check=False)
        if proc.returncode != 0:
            raise NetnsUnavailable(f"`ip netns add` failed: {proc.stderr.strip()}")
        self._created.append(self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        self._bridge("br0")
        for i in range(1, self.hosts + 1):
            ns = self.ns(i)
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # Both ends are made inside the switch namespace, then one moves to the host:
            # no device ever appears in the machine's own namespace.
            _ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.switch, "link", "set", f"p{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.ip_of(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _bridge(self, name: str) -> None:
        if name in self._bridges:
            return
        # STP off and no forwarding delay: a port moved onto a bridge forwards at once.
        _ip("-n", self.switch, "link", "add", name, "type", "bridge", "stp_state", "0",
            "forward_delay", "0")
        _ip("-n", self.switch, "link", "set", name, "up")
        self._bridges.add(name)

    def partition(self, *groups: Sequence[int]) -> None:
        """Split the hosts: each group gets a bridge of its own; hosts not named stay on br0."""
        for g, group in enumerate(groups, start=1):
            bridge = f"br{g}"
            self._bridge(bridge)
            for i in group:
                _ip("-n", self.switch, "link", "set", f"p{i}", "master", bridge)

    def heal(self) -> None:
        """Every host back on one bridge."""
        for i in range(1, self.hosts + 1):
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")

    def links(self) -> str:
        """Which bridge each switch port is on (for failure messages)."""
        return _ip("-n", self.switch, "-br", "link", "show", "type", "veth",
                   check=False).stdout

    def destroy(self) -> list[str]:
        """Delete every namespace made (their devices go with them); returns any errors."""
        problems = []
        for ns in reversed(self._created):
            proc = _ip("netns", "del", ns, check=False)
            if proc.returncode != 0:
                problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        self._created.clear()
        self._bridges.clear()
        return problems


def netns_list() -> list[str]:
    """Names of every network namespace ``ip netns`` knows."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


_OURS = re.compile(r"^dynpt(\d+)x[0-9a-f]{6}-(sw|h\d+)$")


def reap_stale() -> list[str]:
    """Delete namespaces an earlier run of these tests left behind (its process is gone).

    Only names of exactly this module's pattern whose creating process no longer exists are
    touched; a run in progress elsewhere keeps its namespaces. Returns the names deleted.
    """
    reaped = []
    for ns in netns_list():
        match = _OURS.match(ns)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        if os.path.exists(f"/proc/{match.group(1)}"):
            continue
        if _ip("netns", "del", ns, check=False).returncode == 0:
            reaped.append(ns)
    return reaped


# ====================================================================== the agent


class AgentError(Exception):
    """The agent answered with an error (its class name and message), or not at all."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Agent:
    """A client process inside a namespace, driven one JSON line at a time."""

    def __init__(self, prefix: list[str], nodes: Sequence[str], timeout: float = 3.0,
                 stderr_path: str | None = None) -> None:
        self.timeout = timeout
        cmd = [*prefix, sys.executable, os.path.abspath(__file__), "agent",
               json.dumps({"nodes": list(nodes), "timeout": timeout})]
        with open(stderr_path or os.devnull, "ab") as err:
            # preexec_fn only calls prctl, which is safe between fork and exec.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, preexec_fn=die_with_parent)

    def call(self, op: str, **kwargs: Any) -> Any:
        """Run one client call in the namespace; raises AgentError on any failure."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is not None:
            raise AgentError("AgentGone", f"agent exited with status {self.proc.returncode}")
        self.proc.stdin.write((json.dumps({"op": op, "kwargs": kwargs}) + "\n").encode())
        self.proc.stdin.flush()
        # The client's own timeout bounds the call (a get may retry once on another node);
        # start-up of the agent (imports) gets a generous allowance on top.
        wait = 3 * self.timeout + 15.0
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise AgentError("AgentGone", f"no answer to {op} within {wait:g}s")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AgentError(reply["kind"], reply["message"])
        return reply["result"]

    @property
    def process(self) -> subprocess.Popen:
        return self.proc


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _agent_main(settings: str) -> int:
    from dynamo_core.client import Client
    from dynamo_core.errors import DynamoError

    opts = json.loads(settings)
    with Client(opts["nodes"], timeout=opts["timeout"]) as client:
        for line in sys.stdin:
            request = json.loads(line)
            op, kwargs = request["op"], request["kwargs"]
            try:
                if op == "get":
                    r = client.get(**kwargs)
                    result: Any = {"values": r.values, "context": r.context}
                elif op in ("put", "delete"):
                    result = {"context": getattr(client, op)(**kwargs)}
                elif op in ("status", "inspect", "preflist"):
                    result = getattr(client, op)(**kwargs)
                else:
                    raise ValueError(f"unknown op {op!r}")
                reply = {"ok": True, "result": _jsonable(result)}
            except (DynamoError, ValueError, TypeError) as exc:
                reply = {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        sys.exit(_agent_main(sys.argv[2]))
    sys.exit("usage: netns.py agent SETTINGS_JSON")
