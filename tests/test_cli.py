"""The ``dynamo`` command line as a user types it, against real node processes.

Every command runs as its own process (``python -m dynamo_core.cli ...``, or the installed
``dynamo`` script), so exit statuses, stdout and stderr are exactly what a shell sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import RunningCluster, free_port, process_gone, wait_for

from dynamo_core.client import Client

pytestmark = [pytest.mark.timeout(90), pytest.mark.cluster]

CLI = [sys.executable, "-m", "dynamo_core.cli"]


def dynamo(*args: str, timeout: float = 20, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one CLI command and return what the shell would see."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def ok_json(*args: str) -> dict:
    """Run a command with ``--json``; it must succeed and print exactly one JSON document."""
    done = dynamo(*args, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def one_line_failure(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cl(module_cluster):
    return module_cluster(3, config={"buckets": {"carts": {"resolver": "cart-union"},
                                                 "pairs": {"n": 2}}})


@pytest.fixture
def key(request) -> str:
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


# ====================================================================== data round trip


def test_put_get_put_with_context_and_delete_round_trip(cl, key):
    n1, n2, n3 = cl.addresses
    put = ok_json("put", key, '{"items": ["book"]}', "--node", n1)
    assert isinstance(put["context"], str) and put["context"]

    got = ok_json("get", key, "--node", n2)
    assert got["values"] == [{"items": ["book"]}]
    context = got["context"]

    ok_json("put", key, '{"items": ["book", "pen"]}', "--context", context, "--node", n3)
    got = ok_json("get", key, "--node", n1)
    assert got["values"] == [{"items": ["book", "pen"]}]

    deleted = ok_json("delete", key, "--context", got["context"], "--node", n2)
    assert isinstance(deleted["context"], str)
    assert ok_json("get", key, "--node", n3)["values"] == []


def test_two_puts_with_one_context_show_two_values_until_a_put_with_the_merged_context(cl, key):
    n1, n2, _ = cl.addresses
    ok_json("put", key, '"first"', "--node", n1)
    base = ok_json("get", key, "--node", n1)["context"]
    ok_json("put", key, '"left"', "--context", base, "--node", n1)
    ok_json("put", key, '"right"', "--context", base, "--node", n2)

    got = ok_json("get", key, "--node", n2)
    assert sorted(got["values"]) == ["left", "right"]

    ok_json("put", key, '"settled"', "--context", got["context"], "--w", "3", "--node", n1)
    assert ok_json("get", key, "--r", "3", "--node", n2)["values"] == ["settled"]


def test_get_without_json_prints_values_and_a_context_that_put_accepts(cl, key):
    n1 = cl.addresses[0]
    done = dynamo("put", key, "[1, 2, 3]", "--node", n1)
    assert done.returncode == 0 and done.stdout.startswith("ok")

    done = dynamo("get", key, "--node", n1)
    assert done.returncode == 0
    assert "values: [[1, 2, 3]]" in done.stdout
    (context,) = re.findall(r"^context: (\S+)$", done.stdout, re.MULTILINE)

    assert dynamo("put", key, "4", "--context", context, "--node", n1).returncode == 0
    assert ok_json("get", key, "--node", n1)["values"] == [4]


def test_get_of_a_missing_key_prints_no_values(cl, key):
    assert ok_json("get", key, "--node", cl.addresses[0])["values"] == []
    done = dynamo("get", key, "--node", cl.addresses[0])
    assert done.returncode == 0 and "not found" in done.stdout


def test_bucket_option_selects_the_buckets_resolver(cl, key):
    n1, n2, _ = cl.addresses
    ok_json("put", key, '{"items": ["a"]}', "--bucket", "carts", "--node", n1)
    base = ok_json("get", key, "--bucket", "carts", "--node", n1)["context"]
    ok_json("put", key, '{"items": ["b"]}', "--bucket", "carts", "--context", base, "--node", n1)
    ok_json("put", key, '{"items": ["c"]}', "--bucket", "carts", "--context", base, "--node", n2)
    (cart,) = ok_json("get", key, "--bucket", "carts", "--node", n2)["values"]
    assert sorted(cart["items"]) == ["b", "c"]
    # the default bucket is another namespace
    assert ok_json("get", key, "--node", n1)["values"] == []


def test_the_installed_dynamo_script_runs_the_same_commands(cl, key):
    script = shutil.which("dynamo") or str(Path(sys.executable).with_name("dynamo"))
    assert Path(script).exists(), "the console script 'dynamo' is not installed"
    done = subprocess.run([script, "put", key, '"via script"', "--node", cl.addresses[0],
                           "--json"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([script, "get", key, "--node", cl.addresses[1], "--json"],
                          capture_output=True, text=True, timeout=20)
    assert json.loads(done.stdout)["values"] == ["via script"]


def test_the_node_address_defaults_to_the_dynamo_node_environment_variable(cl, key):
    env = {**os.environ, "DYNAMO_NODE": cl.addresses[2]}
    assert dynamo("put", key, "7", env=env).returncode == 0
    done = dynamo("get", key, "--json", env=env)
    assert json.loads(done.stdout)["values"] == [7]


# ====================================================================== operator views


def test_status_json_lists_node_members_keys_and_hints(cl, key):
    n1 = cl.addresses[0]
    ok_json("put", key, "1", "--node", n1)
    status = ok_json("status", "--node", n1)
    assert status["node"] == "n1"
    members = {m["name"]: m for m in status["members"]}
    assert set(members) == set(cl.names)
    for name, member in members.items():
        assert member["address"] == cl.address(name)
        assert member["state"] in ("up", "suspect", "down")
    assert members["n1"]["state"] == "up"
    assert isinstance(status["keys"], int) and status["keys"] >= 1
    assert isinstance(status["hints_pending"], int)


def test_status_without_json_is_a_readable_table(cl):
    done = dynamo("status", "--node", cl.addresses[1])
    assert done.returncode == 0
    assert "node n2" in done.stdout
    for name in cl.names:
        assert re.search(rf"^{name}\s+tcp://", done.stdout, re.MULTILINE)


def test_preflist_json_names_home_nodes_then_fallbacks(cl, key):
    pre = ok_json("preflist", key, "--node", cl.addresses[0])
    assert pre["key"] == key
    assert [n["role"] for n in pre["nodes"]] == ["home", "home", "home"]
    for n in pre["nodes"]:
        assert n["address"] == cl.address(n["name"])
        assert n["state"] in ("up", "suspect", "down")

    pairs = ok_json("preflist", key, "--bucket", "pairs", "--node", cl.addresses[0])
    assert [n["role"] for n in pairs["nodes"]] == ["home", "home", "fallback"]
    assert sorted(n["name"] for n in pairs["nodes"]) == sorted(cl.names)


def test_inspect_json_shows_local_versions_with_clocks_and_tombstones(cl, key):
    n1 = cl.addresses[0]
    ok_json("put", key, '{"v": 1}', "--w", "3", "--node", n1)
    info = ok_json("inspect", key, "--node", n1)
    assert info["node"] == "n1" and info["key"] == key
    assert isinstance(info["hints"], list)
    (version,) = info["versions"]
    assert version["value"] == {"v": 1}
    assert version["tombstone"] is False
    assert isinstance(version["timestamp"], (int, float))
    assert isinstance(version["clock"], list) and version["clock"]

    ctx = ok_json("get", key, "--node", n1)["context"]
    ok_json("delete", key, "--context", ctx, "--w", "3", "--node", n1)
    (tomb,) = ok_json("inspect", key, "--node", n1)["versions"]
    assert tomb["tombstone"] is True


def test_plugins_lists_the_built_in_resolvers_and_engines():
    doc = ok_json("plugins")
    names = {e["name"] for entries in doc.values() for e in entries}
    assert {"cart-union", "last-write-wins", "max-score", "diskcache", "memory"} <= names


# ====================================================================== failures


@pytest.mark.parametrize("value", ["{bad", "book", "[1, 2", ""])
def test_a_value_that_is_not_json_fails_with_one_line_naming_json(cl, value):
    done = dynamo("put", "k", value, "--node", cl.addresses[0])
    line = one_line_failure(done)
    assert "JSON" in line
    assert line.startswith("dynamo put:")


@pytest.mark.parametrize("args, words", [
    (["put", "k", "1", "--w", "0"], ["--w", "0 must be above 0"]),
    (["get", "k", "--r", "-1"], ["--r"]),
    (["get", "k", "--r", "two"], ["--r", "not a number"]),
    (["get", "k", "--node", "notanaddress"], ["--node", "notanaddress", "not an address"]),
    (["get", "k", "--timeout", "0"], ["--timeout"]),
    (["frobnicate"], ["frobnicate"]),
    (["put", "k"], ["VALUE"]),
])
def test_a_bad_argument_exits_non_zero_with_a_clear_message(args, words):
    done = dynamo(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


def test_a_context_that_is_not_base64_is_a_command_line_mistake(cl):
    done = dynamo("put", "k", "1", "--context", "!!not base64!!", "--node", cl.addresses[0])
    line = one_line_failure(done)
    assert done.returncode == 2
    assert line.startswith("dynamo put:") and "--context" in line and "base64" in line


@pytest.mark.parametrize("args, words", [
    (["put", "", "1"], ["dynamo put:", "KEY", "non-empty key"]),
    (["get", "k" * 5000], ["dynamo get:", "KEY", "more than 4096"]),
    (["get", "k", "--bucket", "no spaces"], ["dynamo get:", "--bucket", "bucket name"]),
    (["request", "keycount.total", "[1]"], ["dynamo request:", "BODY", "JSON object"]),
    (["request", "keycount"], ["dynamo request:", "TYPE", "<extension>.<verb>"]),
    (["put", "k", "1", "--foo"], ["dynamo put: unrecognized arguments: --foo"]),
    (["status", "--frobnicate", "x"], ["dynamo status: unrecognized arguments"]),
], ids=["empty-key", "long-key", "bad-bucket", "body-not-object", "type-without-verb",
        "unknown-flag",
        "unknown-flag-status"])
def test_every_command_line_mistake_exits_2_naming_the_subcommand(args, words):
    done = dynamo(*args, "--node", f"tcp://127.0.0.1:{free_port()}")
    line = one_line_failure(done)
    assert done.returncode == 2, line
    for word in words:
        assert word in line, line


def test_a_value_larger_than_an_argument_list_goes_through_stdin_or_a_file(cl, key, tmp_path):
    n1 = cl.addresses[0]
    big = {"blob": "x" * 300_000}  # past what one command-line argument may hold (128 KB)
    done = subprocess.run([*CLI, "put", key, "-", "--node", n1, "--json"], input=json.dumps(big),
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert ok_json("get", key, "--node", n1)["values"] == [big]

    (tmp_path / "value.json").write_text(json.dumps({"blob": "y"}))
    context = ok_json("get", key, "--node", n1)["context"]
    ok_json("put", key, f"@{tmp_path / 'value.json'}", "--context", context, "--node", n1)
    assert ok_json("get", key, "--node", n1)["values"] == [{"blob": "y"}]


def test_a_value_file_that_cannot_be_read_is_a_command_line_mistake(tmp_path):
    done = dynamo("put", "k", f"@{tmp_path / 'missing.json'}")
    line = one_line_failure(done)
    assert done.returncode == 2
    assert line.startswith("dynamo put: VALUE @") and "missing.json" in line


def test_a_quorum_above_n_fails_with_one_line(cl):
    line = one_line_failure(dynamo("put", "k", "1", "--w", "4", "--node", cl.addresses[0]))
    assert "w=4 exceeds n=3" in line


@pytest.mark.parametrize("args", [["get", "k"], ["put", "k", "1"], ["delete", "k"],
                                  ["status"], ["inspect", "k"], ["preflist", "k"]])
def test_a_port_nobody_listens_on_fails_at_once_saying_connection_refused(args):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = dynamo(*args, "--node", address, "--timeout", "30")
    elapsed = time.monotonic() - started
    line = one_line_failure(done)
    assert done.returncode == 1
    assert "connection refused" in line and address in line
    assert elapsed < 10  # interpreter start-up, not the 30 s timeout


def test_an_unknown_host_fails_at_once_saying_so():
    done = dynamo("get", "k", "--node", "tcp://no-such-host.invalid:7101", "--timeout", "30")
    line = one_line_failure(done)
    assert done.returncode == 1
    assert "unknown host 'no-such-host.invalid'" in line


def test_a_listener_that_never_answers_fails_within_the_timeout_with_one_line():
    with socket.socket() as silent:  # accepts TCP connections (backlog), says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = dynamo("get", "k", "--node", address, "--timeout", "0.5")
        elapsed = time.monotonic() - started
    line = one_line_failure(done)
    assert done.returncode == 1
    assert "no answer within 0.5s" in line and address in line
    assert elapsed < 5  # interpreter start-up plus half a second


def test_a_node_with_a_bad_config_file_fails_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[clustr]\nn = 3\n")
    line = one_line_failure(dynamo("node", "--name", "z", "--listen",
                                   f"tcp://127.0.0.1:{free_port()}", "--data-dir",
                                   str(tmp_path / "z"), "--config", str(config)))
    assert "clustr" in line


def test_a_node_naming_a_missing_resolver_fails_at_start_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[buckets.carts]\nresolver = "no-such-resolver"\n')
    line = one_line_failure(dynamo("node", "--name", "z", "--listen",
                                   f"tcp://127.0.0.1:{free_port()}", "--data-dir",
                                   str(tmp_path / "z"), "--config", str(config)))
    assert "no-such-resolver" in line


def test_a_node_whose_port_is_taken_fails_with_one_line(cl, tmp_path):
    line = one_line_failure(dynamo("node", "--name", "intruder", "--listen", cl.addresses[0],
                                   "--data-dir", str(tmp_path / "intruder")))
    assert "cannot listen" in line and cl.addresses[0] in line


@pytest.mark.parametrize("args, words", [
    (["--listen", "tcp://0.0.0.0:{port}"], ["tcp://0.0.0.0", "every interface", "--advertise"]),
    (["--listen", "tcp://[::]:{port}"], ["tcp://[::]", "every interface", "--advertise"]),
    (["--listen", "tcp://0.0.0.0:{port}", "--advertise", "tcp://0.0.0.0:{port}"],
     ["advertised address", "unspecified"]),
    (["--listen", "tcp://0.0.0.0:{port}", "--advertise", "tcp://*:{port}"],
     ["advertised address", "unspecified"]),
    (["--listen", "tcp://0.0.0.0:{port}", "--config", "{advertise_config}"],
     ["advertised address", "unspecified"]),
    (["--listen", "tcp://127.0.0.1:{port}", "--advertise", "tcp://no-such-host.invalid:{port}"],
     ["no-such-host.invalid", "does not resolve"]),
], ids=["wildcard-v4", "wildcard-v6", "unspecified", "star", "unspecified-in-config",
        "unresolvable"])
def test_a_node_that_would_advertise_no_usable_address_refuses_to_start(tmp_path, args, words):
    config = tmp_path / "advertise.toml"
    config.write_text('[node]\nadvertise = "tcp://0.0.0.0:7609"\n')
    args = [a.format(port=free_port(), advertise_config=config) for a in args]
    done = dynamo("node", "--name", "z", "--data-dir", str(tmp_path / "z"), *args)
    line = one_line_failure(done)
    assert done.returncode == 2, line  # the command line was wrong
    for word in words:
        assert word in line, line
    assert not (tmp_path / "z").exists()  # refused before it touched its data directory


def test_node_help_documents_listen_and_advertise():
    done = dynamo("node", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "--advertise tcp://HOST:PORT" in text
    assert "address peers and clients are told" in text
    assert "required when --listen is on every interface" in text


# ====================================================================== dynamo cluster


@pytest.fixture
def running_cluster(dynamo_cluster):
    return dynamo_cluster()


def test_dynamo_cluster_prints_every_node_address_and_serves_requests(running_cluster):
    rc = running_cluster
    addresses = [f"tcp://127.0.0.1:{rc.base + i}" for i in (1, 2)]
    for i, address in enumerate(addresses, start=1):
        assert re.search(rf"^n{i} {re.escape(address)} ", rc.output, re.MULTILINE), rc.output
    assert set(rc.node_pids()) == {"n1", "n2"}

    def both_see_both() -> bool:
        with Client(addresses, timeout=0.5) as c:
            return all({m["name"] for m in c.status(node=a)["members"]} == {"n1", "n2"}
                       for a in addresses)
    wait_for(both_see_both, 15, "the two nodes to see each other")

    # The default config has N=3, but two nodes hold every key: R=W=2 are met.
    assert dynamo("put", "hello", '"world"', "--node", addresses[0]).returncode == 0
    assert ok_json("get", "hello", "--node", addresses[1])["values"] == ["world"]
    assert (rc.data_dir / "n1").is_dir() and (rc.data_dir / "n2").is_dir()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "Ctrl-C to the process group"])
def test_dynamo_cluster_stops_every_node_on_a_signal(running_cluster, how):
    rc = running_cluster
    pids = rc.node_pids()
    assert len(pids) == 2 and not any(process_gone(p) for p in pids.values())

    if how == "SIGTERM":
        rc.proc.send_signal(signal.SIGTERM)
    elif how == "SIGINT":
        rc.proc.send_signal(signal.SIGINT)
    else:
        os.killpg(rc.proc.pid, signal.SIGINT)
    rc.proc.wait(timeout=15)

    assert rc.proc.returncode == 0, rc.output
    wait_for(lambda: "cluster stopped" in rc.output, 5, "the farewell line")
    for name, pid in pids.items():
        assert process_gone(pid), f"{name} (pid {pid}) is still running"


def test_dynamo_cluster_killed_outright_takes_its_nodes_with_it(running_cluster):
    rc = running_cluster
    pids = rc.node_pids()
    rc.proc.kill()  # SIGKILL: no chance to clean up; the nodes' parent-death signal must
    rc.proc.wait()
    wait_for(lambda: all(process_gone(p) for p in pids.values()), 10,
             "the orphaned nodes to exit")


def test_dynamo_cluster_exits_non_zero_when_every_node_dies(dynamo_cluster):
    """With --no-restart (by default dead nodes are restarted: test_readiness.py)."""
    rc = dynamo_cluster("--no-restart")
    for pid in rc.node_pids().values():
        os.kill(pid, signal.SIGKILL)
    rc.proc.wait(timeout=15)
    assert rc.proc.returncode == 1
    wait_for(lambda: "every node of the cluster exited" in rc.output, 5, "the reason")


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    """`dynamo ... | head -1`: the pipe closes before everything is printed (here, before
    anything is: `true` reads nothing)."""
    command = f"{sys.executable} -m dynamo_core.cli keys generate a b c --dir {tmp_path}"
    proc = subprocess.run(f"{command} | true; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


# ====================================================================== status, top, ring


def no_escape_codes(text: str) -> None:
    """Piped output is plain lines: no colours, no cursor movement."""
    assert "\x1b" not in text, repr(text[:200])


def test_status_names_health_and_membership_apart_and_explains_them(cl):
    done = dynamo("status", "--node", cl.addresses[0])
    assert done.returncode == 0, done.stderr
    no_escape_codes(done.stdout)
    header = next(line for line in done.stdout.splitlines() if line.startswith("NAME"))
    assert header.split() == ["NAME", "ADDRESS", "HEALTH", "SINCE", "MEMBERSHIP", "TOKENS",
                              "OWNS"]
    for word in ("HEALTH", "failure detector", "MEMBERSHIP", "gossip", "joining", "leaving"):
        assert word in done.stdout.split(header)[1], word  # the legend under the table


def test_top_once_shows_every_node_in_plain_lines(cl):
    done = dynamo("top", "--once", "--interval", "0.2", "--node", cl.addresses[0])
    assert done.returncode == 0, done.stderr
    no_escape_codes(done.stdout)
    for name, address in zip(cl.names, cl.addresses, strict=True):
        assert re.search(rf"^{name}\s+{re.escape(address)}\s+3/3\s", done.stdout,
                         re.MULTILINE), done.stdout
    assert "REPAIRS/s" in done.stdout and "per second" in done.stdout


def test_ring_shares_add_up_and_draw(cl, tmp_path):
    doc = ok_json("ring", "--node", cl.addresses[0])
    assert doc["n"] == 3 and {m["name"] for m in doc["members"]} == set(cl.names)
    assert sum(m["primary"] for m in doc["members"]) == pytest.approx(1.0, abs=1e-4)
    # three nodes, three copies of every key: each holds all of it
    assert all(m["replica"] == pytest.approx(1.0, abs=1e-4) for m in doc["members"])
    assert all(len(r["homes"]) == 3 for r in doc["ranges"])

    png = tmp_path / "ring.png"
    done = dynamo("ring", "--png", str(png), "--node", cl.addresses[0])
    assert done.returncode == 0, done.stderr
    no_escape_codes(done.stdout)
    assert png.read_bytes().startswith(b"\x89PNG")
    for name in cl.names:
        assert re.search(rf"^{name}\s+tcp://", done.stdout, re.MULTILINE)


# ====================================================================== logs


def test_a_node_logs_one_json_object_a_line_to_a_file(tmp_path):
    log = tmp_path / "node.log"
    address = f"tcp://127.0.0.1:{free_port()}"
    node = subprocess.Popen([*CLI, "node", "--name", "solo", "--listen", address,
                             "--data-dir", str(tmp_path / "solo"), "--log-format", "json",
                             "--log-file", str(log)], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.exists() and "listening" in log.read_text(), 15,
                 "the node's first log lines")
    finally:
        node.send_signal(signal.SIGTERM)
        _, stderr = node.communicate(timeout=15)
    assert stderr == ""  # everything went to the file
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "info" and "listening on" in r["message"] for r in records)


def test_dynamo_cluster_logs_a_peer_going_down_at_info_by_default(tmp_path):
    rc = RunningCluster(tmp_path, "--log-format", "json", nodes=2)
    try:
        wait_for(lambda: len(rc.node_pids()) == 2, 15, "the nodes to start")
        addresses = [f"tcp://127.0.0.1:{rc.base + i}" for i in (1, 2)]

        def both_see_both() -> bool:
            with Client(addresses, timeout=0.5) as c:
                return all({m["name"] for m in c.status(node=a)["members"]
                            if m["state"] == "up"} == {"n1", "n2"} for a in addresses)
        wait_for(both_see_both, 15, "the two nodes to see each other")
        os.kill(rc.node_pids()["n2"], signal.SIGKILL)

        def logged() -> list[dict]:
            records = [json.loads(line) for line in rc.lines if line.startswith("{")]
            return [r for r in records if r["level"] == "info"
                    and re.match(r"n1: peer n2 is (suspect|down) \(was up\)", r["message"])]
        wait_for(logged, 30, "n1 to log that n2 went down")
    finally:
        rc.close()


def test_ring_png_names_the_extra_it_needs_before_asking_any_node(tmp_path):
    hide = ("import sys; sys.modules['matplotlib'] = None; from dynamo_core.cli import main; "
            f"sys.exit(main(['ring', '--png', 'ring.png', '--node', "
            f"'tcp://127.0.0.1:{free_port()}']))")
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    line = one_line_failure(done)
    assert done.returncode == 1
    assert "--png needs matplotlib" in line and "[examples]" in line  # not "refused"
    assert not (tmp_path / "ring.png").exists()
