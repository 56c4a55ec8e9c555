"""``dynamo cluster``: K node processes on loopback, stopped together.

Node *i* is named ``n<i>``, listens on ``tcp://127.0.0.1:<base-port + i>`` and keeps its data
in ``<data-dir>/n<i>``; each is seeded with every other node's address. On Ctrl-C or SIGTERM
every node gets SIGTERM and a few seconds to close cleanly, then SIGKILL; the nodes also ask
the kernel to kill them if this process dies, so none is ever left behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

STOP_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM this process when its parent goes away (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def node_command(i: int, base_port: int, count: int, data_dir: str, config: str | None,
                 log_level: str) -> list[str]:
    address = f"tcp://127.0.0.1:{base_port + i}"
    cmd = [sys.executable, "-m", "dynamo_core.cli", "node", "--name", f"n{i}",
           "--listen", address, "--data-dir", os.path.join(data_dir, f"n{i}"),
           "--log-level", log_level]
    for j in range(1, count + 1):
        if j != i:
            cmd += ["--seed", f"tcp://127.0.0.1:{base_port + j}"]
    if config:
        cmd += ["--config", config]
    return cmd


def run_cluster(count: int, base_port: int, data_dir: str, config: str | None,
                log_level: str) -> str:
    if base_port + count > 65535:
        raise OSError(f"ports {base_port + 1}..{base_port + count} do not fit below 65536")
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for i in range(1, count + 1):
            cmd = node_command(i, base_port, count, data_dir, config, log_level)
            procs[f"n{i}"] = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
            print(f"n{i} tcp://127.0.0.1:{base_port + i} (pid {procs[f'n{i}'].pid}, "
                  f"data {os.path.join(data_dir, f'n{i}')})", flush=True)
        print(f"cluster of {count} nodes running; Ctrl-C stops them all", flush=True)
        exited: set[str] = set()
        while not stopping:
            for name, proc in procs.items():
                if name not in exited and proc.poll() is not None:
                    print(f"{name} exited with status {proc.returncode}", flush=True)
                    exited.add(name)
            if len(exited) == len(procs):
                raise OSError("every node of the cluster exited; see the messages above")
            time.sleep(0.2)
    finally:
        stop_processes(list(procs.values()))
    return "cluster stopped"


def stop_processes(procs: list[subprocess.Popen], sig: int = signal.SIGTERM,
                   grace: float = STOP_GRACE_SECONDS) -> None:
    """Signal every process, give them ``grace`` seconds together, then SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
