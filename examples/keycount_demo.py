"""Run the ``keycount`` protocol extension on a local cluster: one command, no set-up.

    python examples/keycount_demo.py

Starts three nodes whose config loads ``examples/keycount.py`` through ``[plugins] modules``
(the core is not changed), writes some keys, then asks one node for the cluster-wide count,
which it gathers over the bus from every node.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dynamo_core import Client
from dynamo_core.cluster import LocalCluster

KEYS = 300
CONFIG = """
[cluster]
n = 3
w = 3
[plugins]
modules = ["keycount"]
[extensions.keycount]
interval = 0.5
"""


def main() -> int:
    examples = str(Path(__file__).resolve().parent)
    # The nodes import the plugin by name, so it must be on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (examples, os.environ.get("PYTHONPATH")) if p)
    with LocalCluster(3, config_toml=CONFIG) as cluster, Client(cluster.addresses) as c:
        print(f"cluster up: {', '.join(cluster.addresses)}")
        print(f"extensions on n1: {c.status(cluster.addresses[0])['extensions']}")
        for i in range(KEYS):
            c.put(f"item-{i}", i)
        print(f"wrote {KEYS} keys with n=3, w=3")
        total = c.request("keycount.total", node=cluster.addresses[0])
        print(f"keycount.total from n1: {total['replicas']} replicas on "
              f"{len(total['by_node'])} nodes {total['by_node']}, "
              f"about {total['estimated_keys']} distinct keys")
        if total["estimated_keys"] != KEYS or total["missing"]:
            print(f"expected {KEYS} keys from every node, got {total}", file=sys.stderr)
            return 1
        time.sleep(1.2)  # let the periodic refresh run on n2
        cached = c.request("keycount.total", {"cached": True}, node=cluster.addresses[1])
        print(f"keycount.total (cached by n2's background refresh): "
              f"{cached['estimated_keys']} keys")
        if cached["estimated_keys"] != KEYS:
            print(f"the background refresh counted {cached}", file=sys.stderr)
            return 1
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
