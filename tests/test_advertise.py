"""Listen on one address, advertise another (issue 11): what peers and clients are told.

* The address rules (:mod:`dynamo_core.address`): parsing, unspecified and loopback hosts,
  IPv6 in brackets, and which address a node advertises (never an unspecified one).
* A node refuses to start when its advertised host name does not resolve.
* Nodes bind ``[::]`` and talk to each other and to clients over IPv6.
* A node restarted with another advertised address than its data directory remembers is
  known there by every node: its new record wins gossip.
* Three "machines" (network namespaces, one node each, distinct IPs), every node listening
  on ``tcp://0.0.0.0:PORT`` and advertising its own IP, as the README's three-machine
  deployment does: the cluster forms, every status shows only the advertised addresses, a
  client given one node reads and writes, and routes to the others at their advertised
  addresses. Skips, saying why, where namespaces cannot be made; always cleans up.

The command line's refusals (exit status 2, the message naming the problem) are in
``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import cbor2
import pytest
from conftest import free_port, free_ports, status, wait_for
from test_extensions import run, running, until
from test_partition import poll, running_netcluster

from dynamo_core.address import (
    AddressError,
    advertised,
    is_ipv6,
    is_loopback,
    is_unspecified,
    parse,
)
from dynamo_core.client import AsyncClient, Client
from dynamo_core.config import from_mapping
from dynamo_core.node import Node, check_resolves

# ====================================================================== the rules


@pytest.mark.parametrize("address, host, port, ipv6", [
    ("tcp://127.0.0.1:7101", "127.0.0.1", 7101, False),
    ("tcp://[::1]:7101", "::1", 7101, True),
    ("tcp://[::]:1", "::", 1, True),
    ("tcp://*:65535", "*", 65535, False),
    ("tcp://myhost.example:7609", "myhost.example", 7609, False),
    ("tcp://:7609", "", 7609, False),
])
def test_an_address_parses_into_host_and_port(address, host, port, ipv6):
    endpoint = parse(address)
    assert (endpoint.host, endpoint.port, endpoint.ipv6) == (host, port, ipv6)
    assert is_ipv6(address) is ipv6


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:7101", "start with tcp://"),
    ("tcp://127.0.0.1", "no :PORT"),
    ("tcp://127.0.0.1:0", "port must be a number"),
    ("tcp://127.0.0.1:65536", "port must be a number"),
    ("tcp://127.0.0.1:http", "port must be a number"),
    ("tcp://::1:7101", "IPv6 address goes in brackets"),
])
def test_a_malformed_address_is_refused_saying_what_is_wrong(address, words):
    with pytest.raises(AddressError, match=words) as err:
        parse(address)
    assert address in str(err.value)
    assert not is_ipv6(address)  # what a socket option needs to know, without raising


@pytest.mark.parametrize("address, unspecified, loopback", [
    ("tcp://0.0.0.0:1", True, False),
    ("tcp://[::]:1", True, False),
    ("tcp://[0:0:0:0:0:0:0:0]:1", True, False),
    ("tcp://*:1", True, False),
    ("tcp://:1", True, False),
    ("tcp://127.0.0.1:1", False, True),
    ("tcp://127.8.9.10:1", False, True),
    ("tcp://[::1]:1", False, True),
    ("tcp://[::ffff:127.0.0.1]:1", False, True),
    ("tcp://localhost:1", False, True),
    ("tcp://10.1.2.3:1", False, False),
    ("tcp://[fd00::1]:1", False, False),
    ("tcp://db1.example:1", False, False),
])
def test_unspecified_and_loopback_addresses_are_told_apart(address, unspecified, loopback):
    assert is_unspecified(address) is unspecified
    assert is_loopback(address) is loopback


def test_a_node_advertises_its_listen_address_unless_told_another():
    assert advertised("tcp://10.0.0.5:7609", None) == "tcp://10.0.0.5:7609"
    assert advertised("tcp://0.0.0.0:7609", "tcp://10.0.0.5:7609") == "tcp://10.0.0.5:7609"
    assert advertised("tcp://[::]:7609", "tcp://[fd00::5]:7609") == "tcp://[fd00::5]:7609"


@pytest.mark.parametrize("listen", ["tcp://0.0.0.0:7609", "tcp://[::]:7609", "tcp://*:7609"])
def test_listening_on_every_interface_without_an_advertised_address_is_refused(listen):
    with pytest.raises(AddressError, match="every interface.*--advertise"):
        advertised(listen, None)


@pytest.mark.parametrize("advertise", ["tcp://0.0.0.0:7609", "tcp://[::]:7609",
                                       "tcp://*:7609", "tcp://:7609"])
def test_an_unspecified_advertised_address_is_refused(advertise):
    with pytest.raises(AddressError, match="unspecified"):
        advertised("tcp://0.0.0.0:7609", advertise)


def test_an_advertised_host_name_must_resolve():
    check_resolves("tcp://localhost:7609")
    check_resolves("tcp://10.9.8.7:7609")
    with pytest.raises(AddressError, match="does not resolve.*no-such-host.invalid"):
        check_resolves("tcp://no-such-host.invalid:7609")


@pytest.mark.parametrize("given, expected", [(None, "tcp://localhost:7609"),
                                              ("tcp://127.0.0.1:7609", "tcp://127.0.0.1:7609")])
def test_a_node_takes_its_advertised_address_from_the_config_unless_given_one(given, expected):
    config = from_mapping({"storage": {"engine": "memory"},
                           "node": {"advertise": "tcp://localhost:7609"}})
    node = Node("a", f"tcp://0.0.0.0:{free_port()}", config=config, advertise=given)
    try:
        assert node.address == node.core.address == node.core.membership.me.address == expected
        assert node.transport.listen == node.listen  # it binds what it was told to listen on
    finally:
        node.transport.close()
        node.core.close()


# ====================================================================== IPv6


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_nodes_bind_every_ipv6_interface_and_talk_to_each_other_and_clients_over_ipv6():
    ports = free_ports(2)
    addresses = [f"tcp://[::1]:{p}" for p in ports]
    config = from_mapping({"storage": {"engine": "memory"},
                           "cluster": {"n": 2, "r": 2, "w": 2, "gossip_interval": 0.1}})
    # One binds [::] (every interface) and advertises ::1, the other binds ::1 itself.
    nodes = [Node("a", f"tcp://[::]:{ports[0]}", advertise=addresses[0], config=config,
                  seeds=(addresses[1],)),
             Node("b", addresses[1], config=config, seeds=(addresses[0],))]

    async def written_through(address: str) -> bool:
        """A put and a get at quorum 2, coordinated by the node at ``address``: it reaches
        the other one (retried until their connections are up)."""
        async with AsyncClient(address, timeout=2.0, route=False) as c:
            await c.put(address, "over ipv6", w=2)  # a failed try leaves a sibling at most
            return set((await c.get(address, r=2)).values) == {"over ipv6"}

    async def scenario() -> None:
        async with running(*nodes):
            for address in addresses:
                await until(lambda a=address: written_through(a), 10.0,
                            f"a write at quorum 2 coordinated by {address}")
            with Client(addresses[1], timeout=5.0) as c:  # the blocking client as well
                doc = await asyncio.to_thread(c.status)
            assert {m["address"] for m in doc["members"]} == set(addresses)

    run(scenario())


# ====================================================================== restart elsewhere


def member(doc: dict, name: str) -> dict:
    return next(m for m in doc["members"] if m["name"] == name)


@pytest.mark.cluster
@pytest.mark.timeout(90)
def test_a_node_restarted_with_another_advertised_address_is_known_there_by_every_node(
        cluster):
    cl = cluster(3)
    with cl.client("n1") as c:
        c.put("before", "kept")
    old_address = cl.address("n3")
    old = member(status(cl, "n1"), "n3")
    cl.kill("n3", signal.SIGTERM)
    # Its data directory remembers it at old_address; it comes back on another port, under
    # a host name (which ZeroMQ resolves when peers connect).
    n3 = cl.nodes["n3"]
    n3.port = free_port()
    n3.advertise = f"tcp://localhost:{n3.port}"
    cl.spawn("n3")
    cl.wait_converged()

    def everyone_knows() -> list[dict]:
        views = [member(status(cl, name), "n3") for name in cl.names]
        return views if all(v["address"] == n3.advertise for v in views) else []

    views = wait_for(everyone_knows, 10.0, "every node to know n3 by its new address")
    assert all(v["version"] > old["version"] for v in views)
    assert not any(json.dumps(old_address) in json.dumps(status(cl, name))
                   for name in cl.names)
    record = cbor2.loads((n3.data_dir / "node.cbor").read_bytes())
    assert record["member"]["address"] == n3.advertise  # what the next start begins from
    # Reached at its new address: by a client given it, and by peers coordinating for it.
    with Client(n3.advertise, timeout=5.0) as c:
        assert c.get("before", r=3).values == ["kept"]
        c.put("after", "moved", w=3)
    with cl.client("n1") as c:
        assert c.get("after", r=3).values == ["moved"]


# ====================================================================== three machines


NETNS_NODES = 3


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_three_machines_listen_on_every_interface_and_are_known_by_their_own_ips(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    started = time.monotonic()
    with running_netcluster(tmp_path, NETNS_NODES, wildcard=True) as nc:
        formed = time.monotonic() - started
        ips = {name: nc.address(name) for name in nc.names}
        # A client on machine A, given only node A's address.
        client = nc.agent("n1")
        # Every node, asked at its advertised address, shows only advertised addresses.
        actors = {}
        for name in nc.names:
            doc = client.call("status", node=ips[name])
            assert doc["address"] == ips[name]
            assert {m["name"]: m["address"] for m in doc["members"]} == ips
            assert "0.0.0.0" not in json.dumps(doc), doc
            actors[doc["actor"]] = name
        # Keys whose first home is each node: the routing client sends their puts there.
        first_homes: dict[str, list[str]] = {name: [] for name in nc.names}
        for i in range(200):
            if all(len(keys) >= 2 for keys in first_homes.values()):
                break
            key = f"k{i}"
            first_homes[nc.homes(key)[0]].append(key)
        keys = [k for ks in first_homes.values() for k in ks]
        for key in keys:
            nc.put("n1", key, key)
        for key in keys:
            assert nc.get("n1", key)["values"] == [key]

        def coordinator(key: str, home: str) -> str:
            """The node that coordinated the key's write: the actor of its version's dot."""
            [version] = nc.inspect(home, key)["versions"]
            return actors[version["dot"][0]]

        # Puts coordinated by B and C: the client reached them at their advertised IPs.
        for home in ("n2", "n3"):
            poll(lambda h=home: h in {coordinator(k, h) for k in first_homes[h]}, 5.0,
                 f"a put routed straight to {home} at {ips[home]}")
        coordinated = {home: sorted({coordinator(k, home) for k in ks})
                       for home, ks in first_homes.items()}
        took = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[advertise] {NETNS_NODES} namespaced nodes on 0.0.0.0 formed in "
              f"{formed:.2f}s; test body done at {took:.2f}s; coordinators by first home: "
              f"{coordinated}", flush=True)
