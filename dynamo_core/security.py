"""CURVE security: key files, who is allowed in, and the ZAP handler that enforces it.

Every socket of a secured cluster speaks CurveZMQ (ZeroMQ's built-in encryption and
authentication): nothing of a key or a value crosses the network in clear, and a connection
whose public key the node does not know is refused by the handshake, before a single frame
of it is read.

Keys:

* the **cluster key** is the server key every node listens with. Clients and peers connect
  with its public half, so one public key reaches every node (a routing client talks to
  whichever node is a key's home). Every node holds its secret half.
* a **node key** is how a node proves to its peers that it is one (it is the client key of
  the node's connections to its peers). The public halves of the node keys allowed as
  peers are listed in ``peers``. Without ``node_key``, a node uses the cluster key, and
  the cluster's public key counts as a peer's.
* a **client key** is an application's or an operator's; its public half is listed with a
  role (see :mod:`access`) under ``[security.clients]``.

Key files are ZeroMQ certificates (``zmq.auth``): ``NAME.key`` holds the public key and
``NAME.key_secret`` both halves. ``dynamo keys generate`` writes a pair.

The ZAP handler (ZeroMQ's authentication protocol, RFC 27) answers the handshake of every
incoming connection from the node's event loop; it gives an allowed connection its public
key as ZeroMQ's User-Id, which comes back with each message and names its
:class:`~dynamo_core.access.Principal`. Refusals are logged once per key per minute.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85

from .access import CLIENT_ROLES, Principal
from .config import SecuritySettings
from .errors import ConfigError
from .throttle import LogThrottle

log = logging.getLogger(__name__)

#: The endpoint ZeroMQ sends handshakes to for authentication (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"dynamo"
#: A refused key is logged at most this often (seconds)...
REFUSAL_LOG_INTERVAL = 60.0
#: ...and at most this many refused keys are told apart; past it, fresh keys share a line.
MAX_REMEMBERED_REFUSALS = 256
Z85_KEY_CHARS = 40


# ====================================================================== key files


def generate(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (both halves, mode 0600).

    Existing files are never overwritten: a key that was handed out must not silently
    change under the nodes and clients that hold it.
    """
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name (no / or leading .)")
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists already; remove it first or pick another name")
    directory.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    public.chmod(0o644)
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    if len(key) != Z85_KEY_CHARS:
        return False
    try:
        return len(zmq.utils.z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError):
        return False


def _read_certificate(path: Path, what: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{what} {path} is not a key file (no public-key line); "
                          f"`dynamo keys generate` writes them") from None
    if not _is_z85_key(public) or (secret is not None and not _is_z85_key(secret)):
        raise ConfigError(f"{what} {path} holds a malformed key (a key is 40 Z85 characters)")
    return public, secret


def load_secret(path: str | os.PathLike[str], what: str = "secret key file") -> tuple[bytes, bytes]:
    """The (public, secret) pair of a ``.key_secret`` file."""
    public, secret = _read_certificate(Path(path), what)
    if secret is None:
        raise ConfigError(f"{what} {path} holds only a public key; give the "
                          f".key_secret file")
    if Path(path).stat().st_mode & 0o077:
        log.warning("%s %s may be read by other users of this machine: `chmod 600` it",
                    what, path)
    return public, secret


def load_public(path: str | os.PathLike[str], what: str = "public key file") -> bytes:
    return _read_certificate(Path(path), what)[0]


def public_keys(paths: Iterable[str | os.PathLike[str]], what: str) -> list[bytes]:
    """The public keys of each file named, and of every ``*.key`` file in each directory."""
    keys: list[bytes] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files = sorted(entry.glob("*.key"))
            if not files:
                log.warning("%s directory %s holds no *.key file", what, entry)
            keys.extend(load_public(f, what) for f in files)
        elif entry.exists():
            keys.append(load_public(entry, what))
        else:
            raise ConfigError(f"{what} {entry} does not exist")
    return keys


# ====================================================================== settings


@dataclass(frozen=True)
class ClientKeys:
    """What a client (or a node dialling its peers) needs: its own pair, the server's key."""

    public: bytes
    secret: bytes
    server: bytes


@dataclass(frozen=True)
class Keyring:
    """A node's keys, and the role of every public key it lets in."""

    server_public: bytes
    server_secret: bytes
    #: how this node dials its peers
    dialling: ClientKeys
    #: z85 public key -> principal
    principals: Mapping[bytes, Principal]

    def principal_of(self, user_id: str | None) -> Principal | None:
        """The principal of a connection ZAP let in (its User-Id is its public key)."""
        if user_id is None:
            return None
        return self.principals.get(user_id.encode("ascii", "replace"))


def load_keyring(settings: SecuritySettings) -> Keyring:
    """Read every key file the settings name; a ConfigError names the first bad one."""
    server_public, server_secret = load_secret(settings.cluster_key, "[security] cluster_key")
    if settings.node_key is None:
        own_public, own_secret = server_public, server_secret
        peers = [server_public]
    else:
        own_public, own_secret = load_secret(settings.node_key, "[security] node_key")
        peers = []
    peers += public_keys(settings.peers, "[security] peers")
    principals: dict[bytes, Principal] = {}
    for role in CLIENT_ROLES:  # a key listed under two roles gets the stronger one
        for key in public_keys(settings.clients.get(role, ()), f"[security.clients] {role}"):
            principals[key] = Principal(role, key)
    for key in peers:
        principals[key] = Principal("peer", key)
    return Keyring(server_public, server_secret,
                   ClientKeys(own_public, own_secret, server_public), principals)


def client_keys(key_file: str | os.PathLike[str],
                server_key_file: str | os.PathLike[str] | None = None) -> ClientKeys:
    """A client's keys: its own ``.key_secret`` file, and the cluster's public key.

    Without ``server_key_file``, the cluster's key is looked for as ``cluster.key`` beside
    the client's key file, where ``dynamo keys generate`` puts both by default.
    """
    public, secret = load_secret(key_file, "client key file")
    if server_key_file is None:
        server_key_file = Path(key_file).parent / "cluster.key"
        if not server_key_file.exists():
            raise ConfigError(f"no cluster public key given, and none at {server_key_file}; "
                              f"pass the cluster's .key file (--server-key, "
                              f"$DYNAMO_SERVER_KEY)")
    return ClientKeys(public, secret, load_public(server_key_file, "cluster public key file"))


# ====================================================================== sockets


def secure_server(sock: zmq.Socket[bytes], keyring: Keyring) -> None:
    """A listening socket: CURVE server, every handshake checked by the ZAP handler."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keyring.server_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keyring.server_secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def secure_client(sock: zmq.Socket[bytes], keys: ClientKeys) -> None:
    """A connecting socket: CURVE client, authenticated by its own pair."""
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)


class ZapHandler:
    """Answers ZeroMQ's authentication requests for one context, from its caller's loop.

    Call :meth:`handle` with each request's frames (a ROUTER bound at
    :data:`ZAP_ENDPOINT` delivers them); it returns the reply's frames.
    """

    def __init__(self, keyring: Keyring, what: str, clock: Callable[[], float]) -> None:
        self.keyring = keyring
        self.what = what
        #: refusals are logged once per key per minute; a flood of fresh keys shares a line
        self.refusals = LogThrottle(log, REFUSAL_LOG_INTERVAL, MAX_REMEMBERED_REFUSALS)
        self.refused = 0
        self._clock = clock

    def handle(self, frames: Sequence[bytes]) -> list[bytes]:
        envelope, request = _split_envelope(frames)
        if len(request) < 6:
            return []  # not a ZAP request: ZeroMQ never sends one; nothing to answer
        version, request_id, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]

        def reply(status: bytes, text: bytes, user: bytes = b"") -> list[bytes]:
            return [*envelope, version, request_id, status, text, user, b""]

        if version != b"1.0":
            return reply(b"500", b"unsupported ZAP version")
        if domain != ZAP_DOMAIN or mechanism != b"CURVE" or len(credentials) != 1 \
                or len(credentials[0]) != 32:
            return reply(b"400", b"this node accepts only CURVE connections")
        key = zmq.utils.z85.encode(credentials[0])
        if key not in self.keyring.principals:
            self._refuse(key.decode("ascii"), address.decode("utf-8", "replace"))
            return reply(b"400", b"unknown key")
        return reply(b"200", b"OK", key)


    def _refuse(self, key: str, address: str) -> None:
        self.refused += 1
        now = self._clock()
        self.refusals.flush(now)
        self.refusals.event(f"{self.what}: refused the handshake of an unknown key", key,
                            f"connecting from {address}; add its public key to the "
                            f"configuration to let it in", now)


def _split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """A ROUTER's routing envelope (up to the empty delimiter), and the request after it."""
    for i, frame in enumerate(frames):
        if frame == b"":
            return list(frames[:i + 1]), list(frames[i + 1:])
    return [], list(frames)

