"""What the operator commands show on a terminal: ``dynamo status``, ``top`` and ``ring``.

Tables are drawn with rich. On a terminal they are coloured; anywhere else (a pipe, a file,
a CI log) the same tables come out as plain lines with no escape codes, wide enough not to
wrap, and each row starts with the member's name so ``grep ^n2`` works. Every view explains
its columns under the table: two of them, a member's health and its membership, both say
"up" in the common case and mean different things.

Rendering only: the commands fetch the documents (``status``, ``ring``) and bring the time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .ring import RING_SIZE
from .routing import RingView

#: Columns a table may take when the output is no terminal (nothing to fit it to).
PLAIN_WIDTH = 250
_HEALTH_STYLE = {"up": "green", "suspect": "yellow", "down": "bold red"}
_MEMBERSHIP_STYLE = {"up": "green", "joining": "cyan", "leaving": "yellow", "removed": "dim"}

STATUS_LEGEND = (
    "HEALTH      this node's opinion of the member, from its failure detector: up (heard from "
    "lately), suspect, down; SINCE: when that opinion last changed",
    "MEMBERSHIP  the member's own record, spread by gossip: joining (filling its ranges), "
    "up, leaving (handing its ranges off), removed",
    "TOKENS      its positions on the ring; OWNS: the share of the key space it is first "
    "home of",
)


def render(renderable: RenderableType, terminal: bool) -> str:
    """The text of ``renderable``: styled for a terminal, plain lines otherwise."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, no_color=not terminal,
                      width=None if terminal else PLAIN_WIDTH, highlight=False,
                      soft_wrap=not terminal)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def table(*columns: str, title: str | None = None) -> Table:
    """A table without side borders: rows start with their first cell."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title,
              title_justify="left", header_style="bold")
    for name in columns:
        t.add_column(name, no_wrap=True)
    return t


def _styled(text: str, styles: Mapping[str, str]) -> Text:
    return Text(text, style=styles.get(text, ""))


def ago(when: float | None, now: float) -> str:
    return "-" if when is None else f"{max(0.0, now - when):.0f}s ago"


def legend(lines: Sequence[str]) -> Text:
    return Text("\n".join(lines), style="dim")


# ====================================================================== dynamo status


def status_view(status: Mapping[str, Any], now: float) -> Group:
    """One node's view: its counters, then its members as a table, then the legend."""
    members = table("NAME", "ADDRESS", "HEALTH", "SINCE", "MEMBERSHIP", "TOKENS", "OWNS",
                    title="members, as this node sees them")
    for m in status["members"]:
        health = "-" if m["status"] == "removed" else m["state"]  # no longer watched
        members.add_row(m["name"], m["address"], _styled(health, _HEALTH_STYLE),
                        ago(m.get("since"), now), _styled(m["status"], _MEMBERSHIP_STYLE),
                        str(m["tokens"]), f"{100 * m['ownership']:.1f}%")
    return Group(Text("\n".join(_status_summary(status))), Text(""), members, Text(""),
                 legend(STATUS_LEGEND))


def _status_summary(status: Mapping[str, Any]) -> list[str]:
    ae = status.get("anti_entropy", {})
    ov = status.get("overload", {})
    partitions = f" ({status['partitions']} partitions)" if status.get("partitions") else ""
    return [
        f"node {status['node']} ({status['address']}), engine {status['engine']}, "
        f"failure detector {status.get('failure_detector', '?')}",
        "ready: true" if status.get("ready") else
        f"ready: false ({'; '.join(status.get('not_ready', []))})",
        f"keys held: {status['keys']}   hints pending: {status['hints_pending']} "
        f"(delivered {status.get('hints_delivered', 0)})   "
        f"open requests: {status['pending_requests']}   read repairs: {status['read_repairs']}",
        f"anti-entropy: {ae.get('exchanges', 0)} exchanges, {ae.get('keys_sent', 0)} keys "
        f"sent, {ae.get('keys_fetched', 0)} fetched, {ae.get('keys_handed_off', 0)} handed "
        f"off, {ae.get('tombstones_reaped', 0)} tombstones reaped",
        f"partitioning: {status.get('partitioning', '?')}{partitions}   extensions: "
        f"{', '.join(status.get('extensions', [])) or 'none'}   plugin errors: "
        f"{status.get('plugin_errors', 0)}",
        f"overload: {'behind' if ov.get('behind') else 'keeping up'}; refused "
        f"{ov.get('overloaded_refusals', 0)} (standing queue), "
        f"{ov.get('in_flight_refusals', 0)} (requests in flight), "
        f"{ov.get('rate_limited', 0)} (over a client's rate)",
    ]


# ====================================================================== dynamo top

TOP_LEGEND = (
    "each row is what that node says of itself; MEMBERS UP: the members it believes up, of "
    "those it knows",
    "KEYS: replicas it holds; HINTS: writes it keeps for an unreachable home; OPEN: requests "
    "it coordinates now",
    "REPAIRS/s, FORWARDS/s, REFUSED/s: read repairs, puts forwarded to a home, requests "
    "refused as busy, per second since the last refresh",
)


def _refused(status: Mapping[str, Any]) -> int:
    ov = status.get("overload", {})
    return int(ov.get("overloaded_refusals", 0)) + int(ov.get("in_flight_refusals", 0)) + \
        int(ov.get("rate_limited", 0))


def _rate(now: Mapping[str, Any], before: Mapping[str, Any] | None, elapsed: float,
          count: Any) -> str:
    if before is None or elapsed <= 0:
        return "-"
    return f"{max(0, count(now) - count(before)) / elapsed:.1f}"


def top_view(statuses: Mapping[str, Mapping[str, Any] | str],
             previous: Mapping[str, Mapping[str, Any] | str], elapsed: float,
             clock: str) -> Group:
    """Every node of the cluster in a row; a node that did not answer says why."""
    rows = table("NODE", "ADDRESS", "MEMBERS UP", "KEYS", "HINTS", "OPEN", "REPAIRS/s",
                 "FORWARDS/s", "REFUSED/s", "BEHIND", title=f"dynamo top  {clock}")
    for address, status in statuses.items():
        if isinstance(status, str):
            rows.add_row(Text("?", style="bold red"), address, Text(status, style="bold red"))
            continue
        before = previous.get(address)
        old = before if isinstance(before, Mapping) else None
        up = sum(m["state"] == "up" for m in status["members"] if m["status"] != "removed")
        known = sum(m["status"] != "removed" for m in status["members"])
        behind = bool(status.get("overload", {}).get("behind"))
        rows.add_row(
            status["node"], address, f"{up}/{known}", str(status["keys"]),
            str(status["hints_pending"]), str(status["pending_requests"]),
            _rate(status, old, elapsed, lambda s: int(s["read_repairs"])),
            _rate(status, old, elapsed, lambda s: int(s.get("forwarded_puts", 0))),
            _rate(status, old, elapsed, _refused),
            Text("yes", style="bold red") if behind else "no")
    return Group(rows, Text(""), legend(TOP_LEGEND))


# ====================================================================== dynamo ring

RING_LEGEND = (
    "RANGES: the ranges (partitions, or token ranges) the member is first home of; PRIMARY: "
    "the share of the key space they cover",
    "REPLICA: the share of the key space it holds a copy of (first home or not); N: copies of "
    "each key (default bucket)",
)


def ring_ranges(view: RingView) -> list[dict[str, Any]]:
    """Every range of the ring with its homes, first home first (the preference list)."""
    ring = view.ring
    return [{"start": start, "end": end, "share": _span(start, end) / RING_SIZE,
             "homes": ring.preference_list(end, view.n)}
            for start, end in ring.ranges()]


def _span(start: int, end: int) -> int:
    return (end - start) % RING_SIZE or RING_SIZE


def ring_document(view: RingView) -> dict[str, Any]:
    """What ``dynamo ring --json`` prints: members with their shares, and every range."""
    ranges = ring_ranges(view)
    primary: dict[str, float] = {}
    replica: dict[str, float] = {}
    count: dict[str, int] = {}
    for r in ranges:
        first = r["homes"][0]
        primary[first] = primary.get(first, 0.0) + r["share"]
        count[first] = count.get(first, 0) + 1
        for home in r["homes"]:
            replica[home] = replica.get(home, 0.0) + r["share"]
    names = sorted({*view.routes, *replica})
    members = [{"name": name, "address": view.routes[name].address if name in view.routes
                else "", "state": view.routes[name].state if name in view.routes else "down",
                "tokens": len(view.ring.tokens_of(name)), "ranges": count.get(name, 0),
                "primary": round(primary.get(name, 0.0), 6),
                "replica": round(replica.get(name, 0.0), 6)} for name in names]
    return {"n": view.n, "partitions": view.ring.partitions, "members": members,
            "ranges": [{**r, "start": str(r["start"]), "end": str(r["end"]),
                        "share": round(r["share"], 6)} for r in ranges]}


def ring_view(doc: Mapping[str, Any], node: str) -> Group:
    cut = f"{doc['partitions']} equal partitions" if doc["partitions"] else "token ranges"
    rows = table("NAME", "ADDRESS", "HEALTH", "TOKENS", "RANGES", "PRIMARY", "REPLICA",
                 title=f"the ring as {node} sees it: {cut}, N={doc['n']}")
    for m in doc["members"]:
        rows.add_row(m["name"], m["address"], _styled(m["state"], _HEALTH_STYLE),
                     str(m["tokens"]), str(m["ranges"]), f"{100 * m['primary']:.1f}%",
                     f"{100 * m['replica']:.1f}%")
    return Group(rows, Text(""), legend(RING_LEGEND))


def draw_ring(doc: Mapping[str, Any], path: str, title: str) -> None:
    """The ring as concentric circles: the outer one colours each range by its first home,
    each inner one by the next home of the preference list, down to the N-th."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from matplotlib.projections.polar import PolarAxes

    names = [m["name"] for m in doc["members"]]
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colour = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
    fig, axes = plt.subplots(figsize=(7, 7), subplot_kw={"projection": "polar"})
    ax = cast(PolarAxes, axes)
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(-1)  # clockwise, as the preference list walks
    width = 1.0 / max(1, doc["n"])
    for r in doc["ranges"]:
        start = int(r["start"]) / RING_SIZE * 2 * math.pi
        share = float(r["share"]) * 2 * math.pi
        for depth, home in enumerate(r["homes"]):
            ax.bar(start, width * 0.95, width=share, bottom=1.0 - (depth + 1) * width + 1.0,
                   align="edge", color=colour[home], edgecolor="white", linewidth=0.3)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylim(0, 2.0)
    ax.spines["polar"].set_visible(False)
    handles = [Rectangle((0, 0), 1, 1, color=colour[m["name"]]) for m in doc["members"]]
    labels = [f"{m['name']}  primary {100 * m['primary']:.1f}%, replica "
              f"{100 * m['replica']:.1f}%" for m in doc["members"]]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
              frameon=False)
    ax.set_title(f"{title}\nouter circle: first home of each range; inner: the next homes, "
                 f"to N={doc['n']}", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
