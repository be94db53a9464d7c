"""Where Portcullis may send a request on someone else's word (SSRF): the one policy for URLs that
come from outside rather than from an admin. Used for client ID metadata documents
(app/oauth_server/clients.py) and for what an upstream's OAuth discovery names
(app/upstream_oauth/discovery.py).

- ``resolve(host, port)``: the one place names become addresses (tests replace it).
- ``is_public(address)``: a globally routable unicast address (not loopback, private,
  link-local, shared, reserved or multicast).
- ``Guard(upstream_url)``: discovery for one upstream. A URL the upstream (or its metadata)
  names may reach a non-public address only when the admin-registered upstream URL is itself on
  one (a self-hosted setup); it must be https unless the upstream is plain http on such an
  address. ``check(url)`` raises ``Refused`` with a message safe to show an admin;
  ``transport(inner)`` checks each request again as it is sent and connects to the address that
  passed (a name rebound between the check and the connection reaches nothing).
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import httpx


class Refused(Exception):
    """A URL Portcullis will not fetch; ``str()`` says why (no secret in it)."""


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


# IPv6 forms that carry an IPv4 address a gateway or tunnel may deliver to: the address counts
# as public only when the IPv4 inside is. NAT64 (RFC 6052) 64:ff9b::/96 reaches the IPv4 it
# embeds (in an IPv6-only cloud subnet, 64:ff9b::a9fe:a9fe is the metadata service).
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NOT_PUBLIC_V6 = (ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): a local gateway
                 ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated), ::, ::1
                 ipaddress.ip_network("fec0::/10"))  # site-local (deprecated)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in NOT_PUBLIC_V6):
            return False
        else:
            inside = ip.sixtofour or (ip.teredo[1] if ip.teredo else None) \
                or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
            if inside is not None and not is_public(str(inside)):
                return False
    return ip.is_global and not ip.is_multicast


def _host_port(url: str) -> tuple[str | None, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None, 0
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def on_private_network(url: str) -> bool:
    """Does the URL's host resolve only to non-public addresses (loopback, private, link-local)?"""
    host, port = _host_port(url)
    addresses = resolve(host, port) if host else []
    return bool(addresses) and not any(is_public(a) for a in addresses)


class Guard:
    """The discovery policy for one upstream (its addresses are resolved once)."""

    def __init__(self, upstream_url: str, private: bool | None = None):
        """``private``: the decision taken at discovery, kept with the registration, so that the
        upstream's name resolving elsewhere later does not widen the policy."""
        self.url = upstream_url
        self.private = on_private_network(upstream_url) if private is None else private
        self.plain_http = self.private and urlsplit(upstream_url).scheme == "http"

    def check(self, url: str, what: str = "a URL") -> list[str] | None:
        """The addresses the URL's host resolved to and passed (None when this upstream is
        self-hosted and any address goes); raises Refused."""
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not self.plain_http):
            raise Refused(f"{what} ({url[:200]}) must be https:// (plain http only when the upstream itself is "
                          "plain http on a private or loopback address)")
        host, port = _host_port(url)
        if not host or parts.username or parts.password:
            raise Refused(f"{what} ({url[:200]}) is not a usable URL")
        if self.private:
            return None  # a self-hosted upstream may point at its own network
        addresses = resolve(host, port)
        if not addresses:
            raise Refused(f"{what} ({url[:200]}): the host does not resolve")
        if not all(is_public(a) for a in addresses):
            raise Refused(f"{what} ({url[:200]}) resolves to a loopback, private or link-local address, which "
                          "only an upstream registered on such an address may point at")
        return addresses

    def transport(self, inner, lib=httpx):
        """``inner`` (a transport of ``lib``: httpx, or httpx2 under Authlib) with every request
        checked again as it is sent, and sent to the address that passed: a name that resolves
        to a public address for the check and to an inner one for the connection (DNS
        rebinding) reaches nothing."""
        return _pinned(lib)(self, inner)


class RefusedConnect(httpx.ConnectError):
    """A URL that passed its check but not the same check when sent (its name now resolves
    elsewhere); ``str()`` is safe to show an admin."""


_PINNED: dict = {}


def _pinned(lib):
    """The pinning transport class for one httpx flavour. It connects to the checked address
    itself (TLS still verifies the name: SNI and Host stay the URL's). A refusal is that
    library's ConnectError (RefusedConnect for httpx): a caller that does not look closer
    treats it as unreachable."""
    if lib in _PINNED:
        return _PINNED[lib]
    refused = RefusedConnect if lib is httpx else lib.ConnectError

    class Pinned(lib.BaseTransport):
        def __init__(self, guard: Guard, inner):
            self.guard, self.inner = guard, inner

        def handle_request(self, request):
            try:
                addresses = self.guard.check(str(request.url), "a URL")
            except Refused as e:
                raise refused(str(e), request=request) from None
            if addresses:
                host = request.url.host
                request.url = request.url.copy_with(host=addresses[0])  # the Host header keeps the name
                request.extensions = {**request.extensions, "sni_hostname": host}
            return self.inner.handle_request(request)

        def close(self) -> None:
            self.inner.close()

    _PINNED[lib] = Pinned
    return Pinned
