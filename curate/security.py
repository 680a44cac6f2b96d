"""Where media may come from. Nothing outside the allowed roots is ever opened.

A media reference is either a network URL (http/https, fetched by the download stage)
or a local path. Local paths (plain or file://) must resolve, after following symlinks,
inside the manifest's folder or one of the recipe's `stages.media.allowed_roots`.

A manifest is untrusted input (URL lists scraped from the web), so the download stage does
not connect to addresses inside the machine or its network by default: loopback, private
(RFC 1918, fc00::/7), link-local (169.254.0.0/16 holds the cloud metadata service), shared
(100.64.0.0/10, the carrier-grade NAT range, where some clouds put metadata too), multicast,
reserved and unspecified addresses, and IPv6 addresses that embed one of them (IPv4-mapped,
6to4, Teredo). `AddressPolicy` decides on the address a connection would actually go to,
never on the host name (a public name may resolve to 10.0.0.1); curate.fetch applies it to
every connection, redirect hops included.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

NETWORK_SCHEMES = ("http", "https", "s3", "gs")


class UnsafeReference(ValueError):
    """A reference we refuse to open; `reason` is the reject reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def scheme_of(ref: str) -> str:
    """'' for a plain path; the lower-cased scheme otherwise (Windows drives count as paths)."""
    parsed = urlparse(ref)
    if len(parsed.scheme) <= 1:
        return ""
    return parsed.scheme.lower()


def is_network_url(ref: str) -> bool:
    return scheme_of(ref) in NETWORK_SCHEMES


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def non_public(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is (loopback, private, ...), None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())):
            if inner is not None and (kind := non_public(inner)):
                return f"{kind} (IPv4 {inner} inside IPv6)"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "not global"


@dataclasses.dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses the download stage may connect to.

    By default only public ones; `allow_private` lifts the rule, `allow_networks` (CIDR
    blocks) lifts it for the addresses inside them (an IPv4-mapped IPv6 address counts as
    its IPv4 address)."""

    allow_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, allow_private: bool = False, allow_networks: list[str] | None = None) -> "AddressPolicy":
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks or []))

    def refusal(self, address: str) -> str | None:
        """Why a connection to `address` (an IP literal, as getaddrinfo returns it) is refused, or None."""
        if self.allow_private:
            return None
        ip = ipaddress.ip_address(address)
        mapped = getattr(ip, "ipv4_mapped", None)
        if any(x in net for net in self.allow_networks for x in (ip, mapped) if x is not None and
               x.version == net.version):
            return None
        return non_public(ip)


def resolve_local(ref: str, manifest_dir: str | os.PathLike[str], allowed_roots: list[str]) -> Path:
    """Turn a local reference into a real path inside an allowed root, or raise UnsafeReference."""
    scheme = scheme_of(ref)
    if scheme == "file":
        parsed = urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            raise UnsafeReference("bad_scheme", f"file URL with a host is not allowed: {ref}")
        ref = unquote(parsed.path)
    elif scheme:
        raise UnsafeReference("bad_scheme", f"scheme '{scheme}' is not allowed (use http, https or a path): {ref}")
    if not ref or "\x00" in ref:
        raise UnsafeReference("bad_path", f"empty or invalid path {ref!r}")
    base = Path(manifest_dir)
    candidate = Path(ref) if os.path.isabs(ref) else base / ref
    real = Path(os.path.realpath(candidate))
    roots = [Path(os.path.realpath(base))] + [Path(os.path.realpath(r)) for r in allowed_roots]
    if not any(_inside(real, root) for root in roots):
        raise UnsafeReference(
            "path_outside_roots",
            f"{ref} resolves to {real}, outside the manifest folder and stages.media.allowed_roots",
        )
    return real


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
