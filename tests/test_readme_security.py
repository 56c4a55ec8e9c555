"""The README's Security section, run as written: every command and the config file in it.

The only change made to it: the cluster runs on free ports (``--base-port``) and the clients
are pointed there (``$DYNAMO_NODE``), so the test never collides with anything else on the
machine. A command commented ``# refused: REASON`` must fail with exit status 1 and say
REASON; one commented ``# no key: no answer`` must fail with status 1 and say so; every other
command must succeed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port_run, stop_process, wait_for

from dynamo_core import Client

README = Path(__file__).resolve().parent.parent / "README.md"
COMMAND_TIMEOUT = 30.0


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def _run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)  # the `dynamo` of this interpreter
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT,
                          env={**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"})


def _cluster_ready(base_port: int, key: Path) -> bool:
    addresses = [f"tcp://127.0.0.1:{base_port + i}" for i in (1, 2, 3)]
    digests = set()
    with Client(addresses, timeout=0.5, key=key, route=False) as c:
        for address in addresses:
            status = c.status(address)
            if {m["name"] for m in status["members"] if m["state"] == "up"} != \
                    {"n1", "n2", "n3"}:
                return False
            digests.add(status["ring_digest"])
    return len(digests) == 1


def test_the_security_section_runs_as_written(tmp_path: Path) -> None:
    blocks = _blocks(_section("Security"))
    assert [kind for kind, _ in blocks] == ["sh", "toml", "sh", "sh"]
    (_, keygen), (_, toml), (_, start), (_, usage) = blocks
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAMO_")}

    for line in keygen.strip().splitlines():
        result = _run(line, tmp_path, env)
        assert result.returncode == 0, f"{line}: {result.stderr}"
    (tmp_path / "dynamo.toml").write_text(toml)

    base_port = free_port_run(4)
    command = start.strip() + f" --base-port {base_port}"
    assert command.startswith("dynamo cluster ")
    cluster = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**env, "PATH": f"{Path(sys.executable).parent}:"
                                                   f"{env.get('PATH', '')}"})
    try:
        wait_for(lambda: _cluster_ready(base_port, tmp_path / "keys" / "ops.key_secret"),
                 20.0, "the secured cluster to be up")
        env["DYNAMO_NODE"] = f"tcp://127.0.0.1:{base_port + 1}"
        exports = []
        for line in usage.strip().splitlines():
            if line.startswith("export "):
                exports.append(line)
                continue
            result = _run("; ".join([*exports, line]), tmp_path, env)
            comment = line.partition("#")[2].strip()
            if comment.startswith("refused:"):
                assert result.returncode == 1, f"{line}: {result.stdout}{result.stderr}"
                assert comment.removeprefix("refused:").strip() in result.stderr
            elif comment.startswith("no key:"):
                assert result.returncode == 1, f"{line}: {result.stdout}{result.stderr}"
                assert "no answer" in result.stderr
            else:
                assert result.returncode == 0, f"{line}: {result.stderr}"
            if line.startswith("dynamo get alice") and not comment:
                assert '"book"' in result.stdout
    finally:
        stop_process(cluster)
    if cluster.returncode not in (0, -15):
        pytest.fail(f"dynamo cluster exited with status {cluster.returncode}")
