"""Quick start: a cart written twice concurrently, read back as siblings, merged, written once.

Run a cluster first (``dynamo cluster --nodes 3``), then ``python examples/quickstart.py``
(or name the nodes to ask: ``python examples/quickstart.py tcp://HOST:PORT ...``).
"""

from __future__ import annotations

import argparse
import os
import sys

from dynamo_core import Client, DynamoError

#: Where `dynamo cluster` starts its first nodes, or the node the `dynamo` command asks.
DEFAULT_NODES = [os.environ["DYNAMO_NODE"]] if os.environ.get("DYNAMO_NODE") else \
    ["tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102"]


def main(nodes: list[str]) -> None:
    with Client(nodes) as c:
        start = c.get("quickstart-cart")
        # Two writers start from the same context: neither has seen the other.
        c.put("quickstart-cart", {"items": ["book"]}, context=start.context)
        c.put("quickstart-cart", {"items": ["pen"]}, context=start.context)
        r = c.get("quickstart-cart")
        print(f"siblings after two concurrent writes: {r.values}")
        merged = r.resolve("cart-union")  # the server-side resolver, run client-side
        c.put("quickstart-cart", merged, context=r.context)
        print(f"after writing the merge back: {c.get('quickstart-cart').values}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("nodes", nargs="*", default=DEFAULT_NODES, metavar="ADDRESS",
                        help=f"nodes of a running cluster (default: {' '.join(DEFAULT_NODES)}: "
                             f"$DYNAMO_NODE, else where `dynamo cluster` starts them)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        main(args.nodes)
    except DynamoError as exc:  # most often: no cluster is running there
        sys.exit(f"quickstart: {exc} (is `dynamo cluster --nodes 3` running?)")
