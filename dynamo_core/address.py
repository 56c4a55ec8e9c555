"""Node addresses (ZeroMQ ``tcp://HOST:PORT`` endpoints): parsed and judged in one place.

A node *listens* on one address and *advertises* another: the one its peers and clients are
told (membership gossip, the ring document of routing clients, ``dynamo status``). Listening
on every interface (``0.0.0.0``, ``[::]``, ``*``) is fine; telling others to connect to
"every interface" is not, so an unspecified address is never advertised.

An IPv6 address is written in brackets (``tcp://[fd00::1]:7609``) and needs ZeroMQ's IPv6
option on the socket that binds or connects to it (:func:`is_ipv6`). A host name is resolved
by ZeroMQ over IPv4 when it connects.

Pure functions, no I/O: checking that a host name resolves is the node runtime's business.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import ConfigError

SCHEME = "tcp://"
#: Hosts that mean "every interface" to a bind: never an address to connect to.
_WILDCARD_HOSTS = frozenset({"", "*"})
EXAMPLE = "tcp://127.0.0.1:7101"


class AddressError(ConfigError):
    """An address that is malformed, or unusable for what it was given for."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed address: the host as written (without IPv6 brackets) and the port."""

    host: str
    port: int
    ipv6: bool


def parse(address: str) -> Endpoint:
    """Split ``tcp://HOST:PORT``; raises AddressError saying what is wrong with it."""
    def bad(why: str) -> AddressError:
        return AddressError(f"{address!r} is not an address like {EXAMPLE} ({why})")

    if not address.startswith(SCHEME):
        raise bad(f"it must start with {SCHEME}")
    try:
        return split_host_port(address[len(SCHEME):])
    except ValueError as exc:
        raise bad(str(exc)) from None


def split_host_port(text: str) -> Endpoint:
    """Split ``HOST:PORT`` (an IPv6 host in brackets); raises ValueError saying what is
    wrong. Node addresses and the metrics endpoint (``[metrics] listen``) share it."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError("no :PORT")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("the port must be a number from 1 to 65535")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, like [::1]:7101")
    return Endpoint(host, int(port), ":" in host)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` is (an IPv4-mapped IPv6 one as the IPv4 it maps), or None
    for a host name (or, in a bind, an interface name)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip


def is_unspecified(address: str) -> bool:
    """True for an address naming no particular host (``0.0.0.0``, ``[::]``, ``*``, an
    empty host): a bind on every interface, which no peer could connect to."""
    host = parse(address).host
    ip = _ip(host)
    return host in _WILDCARD_HOSTS or (ip is not None and ip.is_unspecified)


def is_loopback(address: str) -> bool:
    """True for an address reachable only from this machine (``127.0.0.0/8``, ``[::1]``,
    ``localhost``): what a node may listen on without exposing itself to the network."""
    host = parse(address).host
    ip = _ip(host)
    return host.lower() == "localhost" or (ip is not None and ip.is_loopback)


def is_ipv6(address: str) -> bool:
    """True for an IPv6 address: ZeroMQ speaks IPv4 only on a socket without its IPv6
    option. False for anything that does not parse (the bind or connect then says why)."""
    try:
        return parse(address).ipv6
    except AddressError:
        return False


def advertised(listen: str, advertise: str | None) -> str:
    """The address a node listening on ``listen`` tells its peers and clients.

    ``advertise`` when given, else ``listen`` itself; refused (AddressError) when that would
    be an unspecified address, which every peer would take for its own machine.
    """
    if advertise is None:
        if is_unspecified(listen):
            raise AddressError(
                f"--listen {listen} listens on every interface, which is no address peers "
                f"and clients can connect to; say which one they should use with "
                f"--advertise tcp://HOST:PORT (or [node] advertise in the config)")
        return listen
    if is_unspecified(advertise):
        raise AddressError(
            f"advertised address {advertise} (--advertise, or [node] advertise) is "
            f"unspecified: it names no particular host, and peers and clients need this "
            f"machine's own IP address or host name")
    return advertise
