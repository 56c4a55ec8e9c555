"""The README, run as written: every shell command and every TOML block in it.

Each ``##`` section is one test, run in a fresh directory (holding a link to ``examples/``,
since the README's commands are typed from the repository root). What the runner changes,
and nothing else:

* ``dynamo cluster`` runs on free ports (``--base-port``), and the README's loopback
  addresses ``tcp://127.0.0.1:71NN`` and the clients' default (``$DYNAMO_NODE``) point there;
* a command that needs a running cluster (``dynamo get``, ``python examples/quickstart.py``,
  ...) runs against the one its section started last, else the one *Set up* starts, as a
  reader's second shell would;
  a ``dynamo cluster`` line always starts its cluster, which must come up;
* a placeholder ``<context from get>`` is the context the last command printed;
* a command ending in ``&`` runs in the background until the section ends.

A command commented ``# refused: REASON`` must fail with exit status 1 and say REASON, one
commented ``# no key: ...`` must fail with status 1 for want of an answer; every other one
must succeed. Every TOML block must start a node (key files it names are generated when
the README has not made them), and the configuration block is the sample file
``examples/dynamo.toml``. What cannot run here is in :data:`SKIPPED_COMMANDS` and
:data:`SKIPPED_BLOCKS`, each with its reason.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import free_port, free_port_run, stop_process, wait_for

from dynamo_core import Client
from dynamo_core import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SAMPLE_CONFIG = ROOT / "examples" / "dynamo.toml"
BIN = str(Path(sys.executable).parent)  # the `dynamo` and `python` of this interpreter
COMMAND_TIMEOUT = 120.0
CLUSTER_START_TIMEOUT = 30.0

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

#: Commands the runner does not run (a regular expression on the command), with the reason.
SKIPPED_COMMANDS: list[tuple[str, str]] = [
    # The environment this test runs in was made by these lines (CI runs them first);
    # test_the_install_lines_name_the_extra_the_examples_need checks what they install.
    (r"^python -m pip install ", "an install line: the test runs where it was installed"),
    (r"^python -m pytest", "the whole test suite, of which this test is a part"),
    # Minutes of load each on the CI machine; tests/test_bench.py runs the same options
    # on a small scale.
    (r"^dynamo bench --workload \S+ --(records|rate|ops \d+ --records)", "a measurement run"),
    (r"^dynamo bench --workload a --sweep", "a measurement run"),
    (r"^dynamo sim --seeds 1-200 ", "a sweep of 200 seeds (tests/test_sim.py sweeps a few)"),
    # Run, with their stories checked line by line, by tests/test_examples.py.
    (r"^python examples/(shopping_cart|session_store|leaderboard)\.py",
     "run and checked by tests/test_examples.py"),
]
#: Whole blocks the runner does not run (a regular expression on the block), with the reason.
SKIPPED_BLOCKS: list[tuple[str, str]] = [
    (r"^# on A$", "three machines: tests/test_advertise.py runs it in network namespaces"),
    (r"^redis-server ", "needs Redis and etcd, which CI does not install"),
]

#: Commands that talk to a running cluster (they run against the last one started).
NEEDS_CLUSTER = re.compile(
    r"^(\w+=\S+ )*(dynamo (put|get|delete|status|preflist|inspect|bench|join|leave|remove|"
    r"request|top|ring)\b|python examples/quickstart\.py)")
CLUSTER = re.compile(r"^(\w+=\S+ )*dynamo cluster\b")
LOOPBACK = re.compile(r"tcp://127\.0\.0\.1:71(\d\d)\b")


# ====================================================================== reading the README


@dataclass
class Block:
    kind: str
    text: str


@dataclass
class Section:
    title: str
    blocks: list[Block]
    #: the cluster the section's commands run against until it starts one of its own: the
    #: README's first, the one *Set up* starts (None before it)
    inherited_cluster: str | None = None


def sections() -> list[Section]:
    text = README.read_text()
    found: list[Section] = []
    cluster = None
    for part in re.split(r"\n## ", text)[1:]:
        title = part.split("\n", 1)[0].strip()
        blocks = [Block(kind, body) for kind, body in
                  re.findall(r"^ *```(\w+)\n(.*?)^ *```", part, flags=re.S | re.M)]
        blocks = [Block(b.kind, _dedent(b.text)) for b in blocks if b.kind in ("sh", "toml")]
        if blocks:
            found.append(Section(title, blocks, cluster))
        starts = [c for b in blocks if b.kind == "sh" for c in commands(b.text)
                  if CLUSTER.match(c)]
        cluster = cluster or next(iter(starts), None)
    return found


def _dedent(text: str) -> str:
    lines = text.splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines) + "\n"


def commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment lines dropped,
    ``A && B`` split in two (an install line, then what it was for)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            found.extend(part.strip() for part in line.split(" && "))
    return found


def skip_reason(text: str, skipped: list[tuple[str, str]]) -> str | None:
    for pattern, reason in skipped:
        if re.search(pattern, text, flags=re.M):
            return reason
    return None


def without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command)


def comment_of(command: str) -> str:
    """The comment ending a command (outside quotes), or ''."""
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError:
        return ""
    hashes = [i for i, word in enumerate(words) if word.startswith("#")]
    return " ".join(words[hashes[0]:])[1:].strip() if hashes else ""


# ====================================================================== running it


@dataclass
class Runner:
    """One section's shell: its directory, environment, cluster and background jobs."""

    cwd: Path
    base_port: int = field(default_factory=lambda: free_port_run(5))
    exports: list[str] = field(default_factory=list)
    cluster_command: str | None = None
    cluster: subprocess.Popen[bytes] | None = None
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    last_output: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAMO_")}
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        env["DYNAMO_NODE"] = f"tcp://127.0.0.1:{self.base_port + 1}"
        return env

    def localised(self, command: str) -> str:
        """The command on this runner's ports, with placeholders filled in."""
        command = LOOPBACK.sub(lambda m: f"tcp://127.0.0.1:{self.base_port + int(m[1])}",
                               command)
        if "<context from get>" in command:
            context = re.findall(r'(?:^context: |"context": ")([A-Za-z0-9+/=]+)',
                                 self.last_output, flags=re.M)
            assert context, f"no context printed before: {command}"
            command = command.replace("<context from get>", context[-1])
        return command

    def run(self, command: str) -> None:
        reason = skip_reason(command, SKIPPED_COMMANDS)
        if reason is not None:
            self.skipped.append(f"{command}: {reason}")
            return
        if command.startswith("export "):
            self.exports.append(command)
            return
        if CLUSTER.match(command):
            self.stop_cluster()
            self.cluster_command = command
            self.start_cluster()
            return
        if NEEDS_CLUSTER.match(command) and self.cluster is None:
            self.start_cluster()
        if without_comment(command).endswith("&"):
            line = without_comment(self.localised(command))[:-1]
            self.background.append(self._spawn(line))
            listen = re.search(r"--listen tcp://([\d.]+):(\d+)", line)
            if listen:  # as a reader would, the next command waits for it to be listening
                wait_for(lambda: _accepts(listen[1], int(listen[2])), CLUSTER_START_TIMEOUT,
                         f"`{line}` to listen")
            return
        line = "; ".join([*self.exports, self.localised(command)])
        self.check(command, subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL))

    def check(self, command: str, done: subprocess.CompletedProcess[str]) -> None:
        comment = comment_of(command)
        said = f"{command}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
        if comment.startswith("refused:"):
            assert done.returncode == 1, said
            assert comment.removeprefix("refused:").strip() in done.stderr, said
        elif comment.startswith("no key:"):
            assert done.returncode == 1 and "no answer" in done.stderr, said
        else:
            assert done.returncode == 0, said
            assert "Traceback" not in done.stderr, said
        # Nothing here is a terminal: progress and tables come as plain lines.
        assert "\x1b" not in done.stdout + done.stderr, said
        self.last_output = done.stdout

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        """``command`` in the background, as the process signals reach (``exec``: no shell
        in between), after the section's exports."""
        assignments, rest = re.match(r"((?:\w+=\S+ )*)(.*)", command, flags=re.S).groups()  # type: ignore[union-attr]
        line = "; ".join([*self.exports, f"{assignments}exec {rest}"])
        return subprocess.Popen(["bash", "-c", line], cwd=self.cwd, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def start_cluster(self) -> None:
        assert self.cluster_command, "a command needs a cluster the README never started"
        command = without_comment(self.cluster_command)
        self.cluster = self._spawn(f"{command} --base-port {self.base_port}")
        nodes = int(re.search(r"--nodes (\d+)", command)[1])  # type: ignore[index]
        config = re.search(r"--config (\S+)", command)
        key = client_key(config_mod.load(self.cwd / config[1])) if config else None
        wait_for(lambda: self._cluster_ready(nodes, key), CLUSTER_START_TIMEOUT,
                 f"`{command}` to come up")

    def _cluster_ready(self, nodes: int, key: Path | None) -> bool:
        assert self.cluster is not None and self.cluster.poll() is None, \
            f"`{self.cluster_command}` exited"
        addresses = [f"tcp://127.0.0.1:{self.base_port + i}" for i in range(1, nodes + 1)]
        names = {f"n{i}" for i in range(1, nodes + 1)}
        digests = set()
        with Client(addresses, timeout=0.5, key=key, route=False) as c:
            for address in addresses:
                status = c.status(address)
                if {m["name"] for m in status["members"] if m["state"] == "up"} != names:
                    return False
                digests.add(status["ring_digest"])
        return len(digests) == 1

    def stop_cluster(self) -> None:
        if self.cluster is not None:
            stop_process(self.cluster, signal.SIGINT)  # Ctrl-C, as the README says
            assert self.cluster.returncode == 0, f"`{self.cluster_command}` exited " \
                                                 f"{self.cluster.returncode} on Ctrl-C"
            self.cluster = None

    def close(self) -> None:
        for proc in self.background:
            stop_process(proc)
        if self.cluster is not None:
            stop_process(self.cluster, signal.SIGKILL)


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def client_key(settings: config_mod.Config) -> Path | None:
    """The secret key of a client the config gives a role (any role may ask for status),
    when it has security."""
    if settings.security is None:
        return None
    public = next(p for files in settings.security.clients.values() for p in files)
    return Path(public + "_secret")


# ====================================================================== TOML blocks


def start_node_with(config: Path, cwd: Path) -> None:
    """A node started with ``config`` comes up and answers; then it is stopped."""
    settings = config_mod.load(config)
    _generate_missing_keys(settings, cwd)
    address = f"tcp://127.0.0.1:{free_port()}"
    node = subprocess.Popen(
        [os.path.join(BIN, "dynamo"), "node", "--name", "readme", "--listen", address,
         "--data-dir", str(cwd / "readme-node"), "--config", str(config)],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    key = client_key(settings)
    try:
        def answers() -> bool:
            if node.poll() is not None:
                pytest.fail(f"a node started with {config.name} stopped: "
                            f"{node.stdout.read()}")  # type: ignore[union-attr]
            with Client(address, timeout=0.5, key=key) as c:
                return c.status(address)["node"] == "readme"
        wait_for(answers, CLUSTER_START_TIMEOUT, f"a node started with {config.name}")
    finally:
        stop_process(node)


def _generate_missing_keys(settings: config_mod.Config, cwd: Path) -> None:
    """The key files a config names, made as ``dynamo keys generate`` makes them."""
    security = settings.security
    if security is None:
        return
    files = [security.cluster_key, *(p for ps in security.clients.values() for p in ps)]
    for file in map(Path, files):
        if not file.exists():
            name = file.name.removesuffix("_secret").removesuffix(".key")
            subprocess.run([os.path.join(BIN, "dynamo"), "keys", "generate", name, "--dir",
                            str(file.parent)], check=True, capture_output=True, cwd=cwd)


# ====================================================================== the tests


def _section_ids() -> list[str]:
    return [s.title for s in sections()]


@pytest.fixture
def section_dir(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


@pytest.mark.parametrize("title", _section_ids())
def test_the_section_runs_as_written(title: str, section_dir: Path) -> None:
    section = next(s for s in sections() if s.title == title)
    runner = Runner(section_dir, cluster_command=section.inherited_cluster)
    try:
        for block in section.blocks:
            run_block(block, runner)
        runner.stop_cluster()
    finally:
        runner.close()
    for line in runner.skipped:
        print(f"skipped: {line}")


def run_block(block: Block, runner: Runner) -> None:
    """A shell block's commands in order; a TOML block starts a node."""
    reason = skip_reason(block.text, SKIPPED_BLOCKS)
    if reason is not None:
        runner.skipped.append(f"block {block.text.splitlines()[0]!r}: {reason}")
        return
    if block.kind == "toml":
        config = runner.cwd / "dynamo.toml"  # the name the Security section gives it
        config.write_text(block.text)
        start_node_with(config, runner.cwd)
        return
    for command in commands(block.text):
        runner.run(command)


def test_the_configuration_block_is_the_sample_config_file(tmp_path: Path) -> None:
    """``examples/dynamo.toml`` is the README's configuration block, verbatim after its
    heading comment, and a node starts with it as it is."""
    section = next(s for s in sections() if s.title == "Configuration")
    (block,) = [b for b in section.blocks if b.kind == "toml"]
    sample = SAMPLE_CONFIG.read_text()
    assert sample.endswith(block.text), "examples/dynamo.toml and the README's " \
                                        "configuration block differ"
    start_node_with(SAMPLE_CONFIG, tmp_path)


def test_the_sample_config_shows_every_section_a_config_may_have() -> None:
    shown = set(tomllib.loads(SAMPLE_CONFIG.read_text()))
    commented = set(re.findall(r"^# \[(\w+)", SAMPLE_CONFIG.read_text(), flags=re.M))
    missing = config_mod._SECTIONS - shown - commented
    assert not missing, f"sections examples/dynamo.toml does not show: {missing}"


def test_the_install_lines_name_the_extra_the_examples_need() -> None:
    """An example that draws with matplotlib is preceded in the README by the install line
    of the extra that brings it, and that extra does bring it."""
    installs = "\n".join(c for s in sections() for b in s.blocks if b.kind == "sh"
                         for c in commands(b.text) if c.startswith("python -m pip install"))
    assert "'.[examples]'" in installs, installs
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["examples"]
    drawing = [p.name for p in (ROOT / "examples").glob("*.py")
               if "import matplotlib" in p.read_text()]
    assert drawing and any(e.startswith("matplotlib") for e in extras), (drawing, extras)
