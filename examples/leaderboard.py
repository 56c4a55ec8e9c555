"""A game leaderboard on a ``max-score`` bucket: a best score is never lowered.

Run it with ``python examples/leaderboard.py``. It starts a throwaway cluster of three node
processes (``LocalCluster``) whose bucket ``scores`` uses the ``max-score`` resolver, keeps
one key per player holding ``{"score": n, ...}``, and shows: several game servers
submitting a player's scores at the same moment from the same stale context (the highest
wins), a later but lower submission (it does not lower the best), and the top-K table of a
known set of players read back with ``get``. Every claim it prints is checked against the
store; it exits 0 only if all held, and always stops its cluster.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from _common import CLIENT_TIMEOUT, aretry, claim, heading, local_cluster, retry, run, say

from dynamo_core import AsyncClient, Bucket, Client, GetResult

BUCKET = "scores"
TOP_K = 5

CONFIG = f"""
[cluster]
request_timeout = 1.0
gossip_interval = 0.2
heartbeat_interval = 0.2

[buckets.{BUCKET}]
resolver = "max-score"
n = 3
r = 2
w = 2
"""

#: Games each player finished, in order, submitted one after another (the normal flow).
GAMES: dict[str, list[int]] = {
    "bob": [410, 380],
    "carol": [150, 290],
    "dave": [505],
    "erin": [260, 275],
    "frank": [90],
    "grace": [330, 120],
}


def player_key(player: str) -> str:
    """One key per player: a read or write touches only that player's replicas."""
    return f"player:{player}"


def entry(player: str, score: int, server: str) -> dict[str, Any]:
    """The stored record; ``max-score`` ranks records by their ``score`` field."""
    return {"player": player, "score": score, "server": server}


def best_of(current: dict[str, Any] | None, submitted: dict[str, Any]) -> dict[str, Any]:
    """The record to write back: the submitted one only if it beats the stored best.

    A put *with the current context* supersedes what that context covers, whatever the
    score: the writer says "I saw 505 and I replace it". So a writer that read the current
    best must keep the best itself, by the same rule the resolver applies to concurrent
    writes (the higher score; the newer record on a tie).
    """
    if current is None or submitted["score"] >= current["score"]:
        return submitted
    return current


def score_of(result: GetResult) -> int | None:
    """The best score a read returned (None: the player has none yet)."""
    return result.values[0]["score"] if result.values else None


def submit(scores: Bucket, player: str, score: int, server: str = "server-1") -> dict[str, Any]:
    """The paper's flow for one finished game: get, keep the better record, put with context."""
    current = scores.get(player_key(player))
    record = best_of(current.values[0] if current.values else None,
                     entry(player, score, server))
    scores.put(player_key(player), record, current.context)
    return record


def top(records: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The ``k`` best records, best first; equal scores in player-name order."""
    return sorted(records, key=lambda r: (-r["score"], r["player"]))[:k]


def table(records: list[dict[str, Any]]) -> list[str]:
    """The leaderboard as text lines."""
    lines = [f"{'rank':>4}  {'player':<8} {'score':>5}"]
    lines += [f"{i:>4}  {r['player']:<8} {r['score']:>5}" for i, r in enumerate(records, 1)]
    return lines


async def game_servers(addresses: list[str], player: str,
                       submissions: dict[str, int]) -> None:
    """Every server reads the player's record, then all write at once, each from its read.

    All reads finish before any write starts, so every write carries a context that has
    not seen the others: the concurrency a busy game backend produces.
    """
    async with AsyncClient(addresses, timeout=CLIENT_TIMEOUT) as client:
        scores = client.bucket(BUCKET)
        key = player_key(player)
        reads = await asyncio.gather(*(aretry(lambda: scores.get(key), f"{server}'s read")
                                       for server in submissions))
        await asyncio.gather(*(
            aretry(lambda server=server, score=score, read=read: scores.put(
                key, entry(player, score, server), read.context), f"{server}'s write")
            for (server, score), read in zip(submissions.items(), reads, strict=True)))


def main(args: argparse.Namespace) -> None:
    """Start the cluster, play the games, print the table, stop the cluster."""
    say("starting a local cluster of 3 nodes (bucket 'scores': max-score, N=3, R=2, W=2)")
    with (local_cluster(3, CONFIG, args.log_level) as cl,
          Client(cl.addresses, timeout=CLIENT_TIMEOUT) as client):
        scores = client.bucket(BUCKET)
        best = dict(normal_games(scores))
        best["alice"] = concurrent_games(cl.addresses, scores)
        best["alice"] = lower_later(scores)
        leaderboard(scores, best)


def normal_games(scores: Bucket) -> dict[str, int]:
    """Each player's games, one after another: a better game raises the best, a worse not."""
    heading("Games submitted one after another (get, keep the better record, put)")
    best: dict[str, int] = {}
    for player, games in GAMES.items():
        for score in games:
            retry(lambda player=player, score=score: submit(scores, player, score),
                  f"{player}'s game")
        best[player] = max(games)
        stored = score_of(retry(lambda player=player: scores.get(player_key(player)),
                                "the read back"))
        say(f"{player:<6} played {', '.join(map(str, games)):<10} -> stored best {stored}")
        claim(stored == best[player], f"{player}'s best is {best[player]}")
    return best


def concurrent_games(addresses: list[str], scores: Bucket) -> int:
    """Three servers submit alice's games at once from the same stale context."""
    heading("Three game servers submit alice's games at the same moment")
    retry(lambda: submit(scores, "alice", 200), "alice's first game")
    say("alice's stored best is 200; then three servers read it and submit at once:")
    submissions = {"server-1": 120, "server-2": 340, "server-3": 275}
    for server, score in submissions.items():
        say(f"  {server} submits {score} with the context of its read (it saw only 200)")
    asyncio.run(game_servers(addresses, "alice", submissions))
    raw = retry(lambda: scores.get(player_key("alice"), resolve=False),
                "the read of the siblings")
    sibling_scores = sorted(v["score"] for v in raw.values)
    say(f"get with resolve=False: siblings with scores {sibling_scores}")
    claim(set(sibling_scores) == set(submissions.values()),
          "all three concurrent submissions were kept as siblings; 200 was superseded")
    result = retry(lambda: scores.get(player_key("alice")), "the resolved read")
    say(f"get: {result.values}")
    claim(len(result.values) == 1 and score_of(result) == 340,
          "a get returns one record, the highest score (340, from server-2)")
    return 340


def lower_later(scores: Bucket) -> int:
    """A lower score submitted later never lowers the best, whichever way it arrives."""
    heading("A later, lower game does not lower the best")
    key = player_key("alice")
    slow = retry(lambda: scores.get(key), "the slow server's read")
    say(f"a slow server read alice's record ({score_of(slow)}) ...")
    retry(lambda: submit(scores, "alice", 999, "server-4"), "the new best")
    say("... meanwhile alice scores 999 on server-4, submitted the normal way")
    retry(lambda: scores.put(key, entry("alice", 310, "server-1"), slow.context),
          "the slow server's write")
    say("... and the slow server now writes 310 with its stale context (it never saw 999)")
    raw = retry(lambda: scores.get(key, resolve=False), "the read of the siblings")
    say(f"get with resolve=False: siblings with scores {sorted(v['score'] for v in raw.values)}")
    claim({v["score"] for v in raw.values} == {999, 310},
          "the stale write did not replace 999: it became a sibling of it")
    after = retry(lambda: scores.get(key), "the read")
    say(f"get: {after.values}")
    claim(score_of(after) == 999, "max-score kept 999")
    record = retry(lambda: submit(scores, "alice", 95, "server-2"), "alice's worst game")
    say(f"alice then plays a 95 through submit(): it writes back {record['score']}")
    claim(score_of(retry(lambda: scores.get(key), "the read back")) == 999,
          "submit() read the best first and kept it: the best stays 999")
    say("(A put made with the *current* context replaces the record whatever its score:")
    say("the writer says it saw the best. That is why submit() keeps the better one.)")
    return 999


def leaderboard(scores: Bucket, best: dict[str, int]) -> None:
    """Read every known player's record with get and print the top K."""
    heading(f"Top {TOP_K} (one get per player)")
    records = []
    for player in sorted(best):
        result = retry(lambda player=player: scores.get(player_key(player)),
                       f"{player}'s record")
        records.extend(result.values)
    claim(len(records) == len(best), "every player has exactly one record")
    for line in table(top(records, TOP_K)):
        say(line)
    expected = [p for p, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))][:TOP_K]
    claim([r["player"] for r in top(records, TOP_K)] == expected,
          f"the table ranks {', '.join(expected)}: every player's best, highest first")
    claim(all(r["score"] == best[r["player"]] for r in records),
          "every player's record holds that player's best score")


if __name__ == "__main__":
    run(main, __doc__.splitlines()[0])
