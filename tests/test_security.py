"""Security: CURVE keys, who is let in, what each role may do, nothing in clear on the wire.

Unit tests cover the pure rules (``access``), key files and the ``[security]`` settings, the
ZAP handler and its rate-limited refusal log. The rest runs real node processes with
security on: clients of each role, a client and a node whose keys are unknown, a client
with no keys at all, and a capture of every loopback packet while data crosses it.
"""

from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.utils.z85
from conftest import Cluster, free_port, stop_process, wait_for

from dynamo_core import Client
from dynamo_core.access import OPEN, REQUIRED_ROLE, ROLES, Principal, refusal
from dynamo_core.cluster import LocalCluster
from dynamo_core.config import SecuritySettings, from_mapping, load
from dynamo_core.errors import ConfigError, Forbidden, Timeout
from dynamo_core.security import (
    MAX_REMEMBERED_REFUSALS,
    ZapHandler,
    client_keys,
    generate,
    load_keyring,
    load_public,
    load_secret,
    secure_client,
)
from dynamo_core.wire import BUILT_IN_SCHEMAS, Codec

# ====================================================================== roles (pure)

REPLY_TYPES = {t for t in BUILT_IN_SCHEMAS if t.endswith("_ok") or t in ("error", "pong")}
REQUEST_TYPES = sorted(set(BUILT_IN_SCHEMAS) - REPLY_TYPES)
ADMIN_MESSAGES = ["join", "leave", "remove"]
INTERNAL_MESSAGES = ["replica_get", "replica_put", "replica_put_many", "gossip", "ae_roots",
                     "ae_hashes", "ae_keys", "reap"]


def test_every_request_type_names_the_role_it_needs() -> None:
    assert sorted(REQUIRED_ROLE) == REQUEST_TYPES


@pytest.mark.parametrize("msg_type", REQUEST_TYPES)
def test_each_role_may_send_exactly_the_requests_at_or_below_it(msg_type: str) -> None:
    needed = REQUIRED_ROLE[msg_type]
    for role in ROLES:
        allowed = refusal(Principal(role, b"k"), msg_type, {}, {}) is None
        assert allowed == (ROLES.index(role) >= ROLES.index(needed)), (role, msg_type)


@pytest.mark.parametrize("msg_type", ADMIN_MESSAGES)
def test_admin_messages_are_refused_to_data_clients(msg_type: str) -> None:
    for role in ("read", "write"):
        why = refusal(Principal(role, b"k"), msg_type, {}, {})
        assert why is not None and "admin role" in why and f"{role} role" in why


def test_internal_messages_are_for_nodes_only() -> None:
    for msg_type in INTERNAL_MESSAGES:
        assert refusal(Principal("admin", b"k"), msg_type, {}, {}) is not None
        assert refusal(Principal("peer", b"k"), msg_type, {}, {}) is None


def test_only_a_node_may_set_the_forwarded_field() -> None:
    body = {"bucket": "b", "key": "k", "value": 1, "forwarded": True}
    for role in ("write", "admin"):
        assert "forwarded" in (refusal(Principal(role, b"k"), "put", body, {}) or "")
    assert refusal(Principal("peer", b"k"), "put", body, {}) is None


def test_extension_messages_need_the_role_they_are_marked_with() -> None:
    roles = {"ext.stats": "read", "ext.reset": "admin"}
    assert refusal(Principal("read", b"k"), "ext.stats", {}, roles) is None
    assert refusal(Principal("write", b"k"), "ext.reset", {}, roles) is not None
    assert refusal(Principal("admin", b"k"), "ext.reset", {}, roles) is None


def test_without_security_everyone_may_do_everything() -> None:
    for msg_type in REQUEST_TYPES:
        assert refusal(OPEN, msg_type, {"forwarded": True}, {}) is None


# ====================================================================== key files


def test_generated_keys_load_back_and_the_secret_file_is_private(tmp_path: Path) -> None:
    public_file, secret_file = generate(tmp_path, "app")
    assert (secret_file.stat().st_mode & 0o777) == 0o600
    public, secret = load_secret(secret_file)
    assert load_public(public_file) == public
    assert len(public) == 40 and len(secret) == 40 and public != secret
    assert zmq.curve_public(secret) == public


def test_a_secret_key_others_may_read_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, secret_file = generate(tmp_path, "app")
    with caplog.at_level(logging.WARNING, logger="dynamo_core.security"):
        load_secret(secret_file)
        assert not caplog.records
        secret_file.chmod(0o644)
        load_secret(secret_file)
    assert "chmod 600" in caplog.records[0].getMessage()


def test_generating_never_overwrites_a_key(tmp_path: Path) -> None:
    generate(tmp_path, "app")
    before = (tmp_path / "app.key_secret").read_bytes()
    with pytest.raises(ConfigError, match="exists already"):
        generate(tmp_path, "app")
    assert (tmp_path / "app.key_secret").read_bytes() == before


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_a_key_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        generate(tmp_path, name)


def test_key_files_that_are_wrong_are_named(tmp_path: Path) -> None:
    public_file, _ = generate(tmp_path, "app")
    with pytest.raises(ConfigError, match="holds only a public key"):
        load_secret(public_file)
    (tmp_path / "junk.key").write_text("hello\n")
    with pytest.raises(ConfigError, match="not a key file"):
        load_public(tmp_path / "junk.key")
    (tmp_path / "short.key").write_text('public-key = "abc"\n')
    with pytest.raises(ConfigError, match="malformed key"):
        load_public(tmp_path / "short.key")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_public(tmp_path / "missing.key")


def test_a_client_finds_the_cluster_key_beside_its_own(tmp_path: Path) -> None:
    generate(tmp_path, "app")
    with pytest.raises(ConfigError, match="no cluster public key"):
        client_keys(tmp_path / "app.key_secret")
    cluster_public, _ = generate(tmp_path, "cluster")
    keys = client_keys(tmp_path / "app.key_secret")
    assert keys.server == load_public(cluster_public)


def _keys(root: Path, *names: str) -> Path:
    for name in names:
        generate(root / "keys", name)
    return root / "keys"


def test_the_keyring_gives_each_listed_key_its_role(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "cluster", "ops", "app", "reader")
    (keys / "apps").mkdir()
    generate(keys / "apps", "web")
    settings = SecuritySettings(str(keys / "cluster.key_secret"), clients={
        "admin": (str(keys / "ops.key"),), "write": (str(keys / "app.key"), str(keys / "apps")),
        "read": (str(keys / "reader.key"), str(keys / "ops.key"))})
    ring = load_keyring(settings)
    role = {name: ring.principals[load_public(keys / f"{name}.key")].role
            for name in ("cluster", "ops", "app", "reader")}
    assert role == {"cluster": "peer", "ops": "admin", "app": "write", "reader": "read"}
    assert ring.principals[load_public(keys / "apps" / "web.key")].role == "write"
    assert ring.principal_of(None) is None and ring.principal_of("unknown") is None


def test_with_node_keys_only_the_listed_peers_are_peers(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "cluster", "n1", "n2")
    ring = load_keyring(SecuritySettings(str(keys / "cluster.key_secret"),
                                         node_key=str(keys / "n1.key_secret"),
                                         peers=(str(keys / "n2.key"),)))
    assert ring.dialling.public == load_public(keys / "n1.key")
    assert ring.dialling.server == load_public(keys / "cluster.key")
    assert set(ring.principals) == {load_public(keys / "n2.key")}


def test_security_settings_resolve_paths_against_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "dynamo.toml"
    config.parent.mkdir()
    config.write_text('[security]\ncluster_key = "keys/cluster.key_secret"\n'
                      '[security.clients]\nwrite = "keys/apps"\n')
    security = load(config).security
    assert security is not None
    assert security.cluster_key == str(tmp_path / "etc" / "keys" / "cluster.key_secret")
    assert security.clients == {"write": (str(tmp_path / "etc" / "keys" / "apps"),)}


@pytest.mark.parametrize("table, message", [
    ({"clients": {}}, "cluster_key .* is required"),
    ({"cluster_key": 3}, "cluster_key must be a file path"),
    ({"cluster_key": "c", "peers": [1]}, "peers must be a path or a list of paths"),
    ({"cluster_key": "c", "clients": {"root": "x"}}, "unknown setting.*root"),
    ({"cluster_key": "c", "secret": "x"}, "unknown setting.*secret"),
])
def test_bad_security_settings_are_named(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping({"security": table})


def test_without_a_security_section_there_is_no_security() -> None:
    assert from_mapping({}).security is None


# ====================================================================== ZAP handler


def _zap_request(key: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    return [b"peer-id", b"", b"1.0", b"7", b"dynamo", b"10.0.0.9", b"", mechanism, key]


def test_the_zap_handler_lets_in_known_keys_as_themselves(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "cluster", "app")
    ring = load_keyring(SecuritySettings(str(keys / "cluster.key_secret"),
                                         clients={"write": (str(keys / "app.key"),)}))
    handler = ZapHandler(ring, "n1", lambda: 0.0)
    app = load_public(keys / "app.key")
    reply = handler.handle(_zap_request(zmq.utils.z85.decode(app)))
    assert reply == [b"peer-id", b"", b"1.0", b"7", b"200", b"OK", app, b""]
    stranger = zmq.utils.z85.decode(zmq.curve_keypair()[0])
    assert handler.handle(_zap_request(stranger))[4] == b"400"
    assert handler.handle(_zap_request(b"", b"NULL"))[4] == b"400"
    assert handler.refused == 1


def test_refused_keys_are_logged_once_per_key_per_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = _keys(tmp_path, "cluster")
    clock = [0.0]
    handler = ZapHandler(load_keyring(SecuritySettings(str(keys / "cluster.key_secret"))),
                         "n1", lambda: clock[0])
    stranger = zmq.curve_keypair()[0]
    with caplog.at_level(logging.WARNING, logger="dynamo_core.security"):
        for t in range(30):  # one key knocking every second for half a minute
            clock[0] = float(t)
            handler.handle(_zap_request(zmq.utils.z85.decode(stranger)))
        clock[0] = 61.0
        handler.handle(_zap_request(zmq.utils.z85.decode(stranger)))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and handler.refused == 31
    assert f"unknown key from {stranger.decode()}" in lines[0]
    assert "29 times in the last 61 s" in lines[1]


def test_a_flood_of_fresh_keys_is_summarised_not_remembered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = _keys(tmp_path, "cluster")
    handler = ZapHandler(load_keyring(SecuritySettings(str(keys / "cluster.key_secret"))),
                         "n1", lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="dynamo_core.security"):
        for _ in range(2_000):
            handler.handle(_zap_request(secrets.token_bytes(32)))
    assert handler.refused == 2_000
    assert len(caplog.records) <= MAX_REMEMBERED_REFUSALS + 1


# ====================================================================== real processes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    for name in ("cluster", "ops", "app", "reader"):
        generate(root, name)
    generate(root / "strangers", "eve")
    generate(root / "strangers", "rogue-node")
    return root


def _security_config(keys: Path) -> dict[str, Any]:
    return {"security": {"cluster_key": str(keys / "cluster.key_secret"), "clients": {
        "admin": [str(keys / "ops.key")], "write": [str(keys / "app.key")],
        "read": [str(keys / "reader.key")]}}}


@pytest.fixture(scope="module")
def secured(module_cluster, keys: Path) -> Cluster:
    return module_cluster(3, config=_security_config(keys), key=keys / "ops.key_secret")


def _client(cl: Cluster, keys: Path, who: str, timeout: float = 5.0, **kw: Any) -> Client:
    return Client(cl.addresses, timeout=timeout, key=keys / f"{who}.key_secret",
                  server_key=keys / "cluster.key", **kw)


def test_a_write_client_reads_and_writes(secured: Cluster, keys: Path) -> None:
    with _client(secured, keys, "app") as c:
        c.put("cart:alice", {"items": ["book"]})
        assert c.get("cart:alice").values == [{"items": ["book"]}]


def test_a_read_client_reads_but_may_not_write(secured: Cluster, keys: Path) -> None:
    with _client(secured, keys, "app") as c:
        c.put("cart:bob", {"items": ["pen"]})
    with _client(secured, keys, "reader") as c:
        assert c.get("cart:bob").values == [{"items": ["pen"]}]
        with pytest.raises(Forbidden, match="put needs the write role"):
            c.put("cart:bob", {"items": []})
        with pytest.raises(Forbidden, match="delete needs the write role"):
            c.delete("cart:bob")


@pytest.mark.parametrize("who", ["reader", "app"])
def test_data_clients_may_not_change_membership(secured: Cluster, keys: Path,
                                                who: str) -> None:
    with _client(secured, keys, who) as c:
        with pytest.raises(Forbidden, match="join needs the admin role"):
            c.join(secured.address("n3"), secured.address("n1"))
        with pytest.raises(Forbidden, match="leave needs the admin role"):
            c.leave(secured.address("n3"))
        with pytest.raises(Forbidden, match="remove needs the admin role"):
            c.remove("n3", secured.address("n1"))
    assert sorted(secured.running()) == ["n1", "n2", "n3"]
    with secured.client("n1") as c:
        assert {m["name"] for m in c.status(secured.address("n1"))["members"]} == \
            {"n1", "n2", "n3"}


def _raw_request(cl: Cluster, keys: Path, who: str, msg_type: str,
                 body: dict[str, Any]) -> dict[str, Any]:
    """Send one hand-made request as ``who``: what the Client never sends."""
    codec = Codec()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        secure_client(sock, client_keys(keys / f"{who}.key_secret", keys / "cluster.key"))
        sock.connect(cl.address("n1"))
        sock.send(codec.encode(msg_type, body, 1))
        assert sock.poll(5000), f"no answer to {msg_type}"
        msg = codec.decode(sock.recv())
        return {"type": msg.type, **msg.body}
    finally:
        sock.close(0)
        ctx.term()


def test_a_client_may_not_pose_as_a_node(secured: Cluster, keys: Path) -> None:
    forwarded = _raw_request(secured, keys, "app", "put", {
        "bucket": "default", "key": "k", "value": 1, "forwarded": True})
    assert forwarded["code"] == "forbidden" and "forwarded" in forwarded["message"]
    replica = _raw_request(secured, keys, "ops", "replica_put", {
        "bucket": "default", "key": "k", "versions": []})
    assert replica["code"] == "forbidden" and "peer role" in replica["message"]
    gossip = _raw_request(secured, keys, "ops", "gossip", {"members": []})
    assert gossip["code"] == "forbidden"


def test_an_unknown_client_key_is_refused_by_the_handshake_and_logged_once(
        secured: Cluster, keys: Path) -> None:
    eve = keys / "strangers" / "eve.key_secret"
    eve_public = load_public(keys / "strangers" / "eve.key").decode()
    for _ in range(3):
        with Client(secured.address("n1"), timeout=0.5, key=eve,
                    server_key=keys / "cluster.key", route=False) as c, \
                pytest.raises(Timeout, match="allows this client's key"):
            c.get("cart:alice")
    log = secured.nodes["n1"].log_path.read_text()
    assert log.count(f"unknown key from {eve_public}") == 1


def test_a_client_without_keys_gets_nothing(secured: Cluster) -> None:
    with Client(secured.address("n1"), timeout=0.5, route=False) as c, pytest.raises(Timeout):
        c.get("cart:alice")


def test_a_node_with_an_unknown_key_is_not_let_in(secured: Cluster, keys: Path,
                                                  tmp_path: Path) -> None:
    """It holds the cluster's key (it can listen like a node) but dials with a key of its
    own that no node lists as a peer: its gossip is refused, it never becomes a member."""
    config = tmp_path / "rogue.toml"
    config.write_text(f'[security]\ncluster_key = "{keys / "cluster.key_secret"}"\n'
                      f'node_key = "{keys / "strangers" / "rogue-node.key_secret"}"\n')
    rogue_public = load_public(keys / "strangers" / "rogue-node.key").decode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamo_core.cli", "node", "--name", "rogue", "--listen",
         f"tcp://127.0.0.1:{free_port()}", "--seed", secured.address("n1"), "--config",
         str(config), "--data-dir", str(tmp_path / "rogue"), "--log-level", "warning"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f"unknown key from {rogue_public}" in
                 secured.nodes["n1"].log_path.read_text(), 10.0, "n1 to refuse the rogue")
        time.sleep(1.0)  # gossip rounds run five times a second: it keeps knocking
        with secured.client("n1") as c:
            members = {m["name"] for m in c.status(secured.address("n1"))["members"]}
        assert members == {"n1", "n2", "n3"}
        assert secured.nodes["n1"].log_path.read_text().count(
            f"unknown key from {rogue_public}") == 1
    finally:
        stop_process(proc)


# ====================================================================== the wire


class LoopbackCapture:
    """Every packet on the loopback interface while it runs (AF_PACKET, root only)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.data += self.sock.recv(65536)
            except TimeoutError:
                continue

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(0.2)  # the last packets of the exchange
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _capture_or_skip() -> LoopbackCapture:
    try:
        return LoopbackCapture()
    except (PermissionError, OSError, AttributeError) as exc:
        pytest.skip(f"cannot capture loopback packets here (needs root and AF_PACKET): {exc}")


def _plain_exchange(marker: bytes) -> None:
    """Send ``marker`` in clear over a loopback TCP connection: the capture's own check."""
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as out:
        conn, _ = server.accept()
        with conn:
            out.sendall(marker)
            assert conn.recv(len(marker)) == marker


def test_nothing_of_a_key_or_a_value_crosses_the_wire_in_clear(
        secured: Cluster, keys: Path) -> None:
    key, value = f"secret-key-{secrets.token_hex(8)}", f"secret-value-{secrets.token_hex(8)}"
    control = f"plain-control-{secrets.token_hex(8)}".encode()
    capture = _capture_or_skip()
    with capture:
        with _client(secured, keys, "app") as c:
            c.put(key, {"card": value}, w=3)  # every replica is written over loopback
            assert c.get(key, r=3).values == [{"card": value}]
        with secured.client() as c:
            c.status()
        _plain_exchange(control)
    assert control in capture.data, "the capture saw no loopback traffic"
    assert key.encode() not in capture.data
    assert value.encode() not in capture.data


def test_without_security_the_same_capture_does_see_the_data(module_cluster) -> None:
    """The control of the test above: the capture would have found them in clear."""
    open_cluster = module_cluster(2)
    value = f"visible-value-{secrets.token_hex(8)}"
    capture = _capture_or_skip()
    with capture, open_cluster.client() as c:
        c.put("k", value, w=2)
    assert value.encode() in capture.data



def _start_log_of_node(tmp_path: Path, *extra: str) -> str:
    """What a node listening on every interface logs as it starts."""
    port, log = free_port(), tmp_path / "n1.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo_core.cli", "node", "--name", "n1", "--listen",
             f"tcp://0.0.0.0:{port}", "--advertise", f"tcp://127.0.0.1:{port}", "--data-dir",
             str(tmp_path / "n1"), "--log-level", "info", *extra],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for(lambda: "listening on" in log.read_text(), 15.0, "the node to listen")
    finally:
        stop_process(proc)
    return log.read_text()


def test_listening_beyond_loopback_without_security_is_loudly_logged(tmp_path: Path) -> None:
    text = _start_log_of_node(tmp_path)
    assert "SECURITY IS OFF while listening on tcp://0.0.0.0:" in text


def test_listening_beyond_loopback_with_security_is_quiet(tmp_path: Path, keys: Path) -> None:
    config = tmp_path / "secure.toml"
    config.write_text(f'[security]\ncluster_key = "{keys / "cluster.key_secret"}"\n')
    text = _start_log_of_node(tmp_path, "--config", str(config))
    assert "with CURVE security" in text and "SECURITY IS OFF" not in text


def test_a_client_cannot_take_the_answers_meant_for_a_node_by_claiming_its_routing_id(
        cluster) -> None:
    """A ROUTER routes answers by the routing id a connection chose. Were a node's own
    connections named after it (with handover on), anyone connecting as ``n2`` would get
    the answers n1 owes n2, and n2's puts would miss their quorum."""
    cl = cluster(2)
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.DEALER)
    try:
        rogue.setsockopt(zmq.ROUTING_ID, b"n2")
        rogue.connect(cl.address("n1"))
        rogue.send(Codec().encode("ping", {}, 1))
        assert rogue.poll(5000), "the rogue's own ping got no answer"
        rogue.recv()
        with cl.client("n2") as c:
            for i in range(5):
                c.put(f"k{i}", i, w=2, node=cl.address("n2"))
        assert not rogue.poll(200), "the rogue received an answer meant for n2"
    finally:
        rogue.close(0)
        ctx.term()


def test_a_local_cluster_runs_with_security_given_a_key(keys: Path) -> None:
    config = (f'[security]\ncluster_key = "{keys / "cluster.key_secret"}"\n'
              f'[security.clients]\nadmin = ["{keys / "ops.key"}"]\n')
    with LocalCluster(2, config_toml=config, key=keys / "ops.key_secret") as cl, \
            Client(cl.addresses, key=keys / "ops.key_secret") as c:
        c.put("k", "v")
        assert c.get("k").values == ["v"]
