"""Where a client's calls go, as its user named them: one pool-server,
several (``h1:50051,h2:50051`` or a list), every address of a DNS name
(``dns:///name:port``), or ``local``.

This module only parses and resolves names; choosing a server for each call
is ``_balancer``'s.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from distribute_client._credentials import Credentials
from distribute_client._transport import DEFAULT_SERVER, SERVER_ENV, Address

DNS_PREFIX = "dns:///"

# How to spread calls over several servers.
LEAST_LOADED = "least_loaded"  # the fewest outstanding calls per worker
ROUND_ROBIN = "round_robin"
WEIGHTED = "weighted"  # static weights, as Galileo's routing table
POLICIES = (LEAST_LOADED, ROUND_ROBIN, WEIGHTED)

# A dns:/// name is looked up again after this long, as gRPC's own resolver
# does at most every 30 s.
DNS_TTL_S = 30.0

ServerSpec = str | Sequence[str] | None
TokenSpec = str | Mapping[str, str] | None


@dataclass(frozen=True)
class DnsName:
    """``dns:///host:port``: every address ``host`` resolves to."""

    host: str
    port: int
    tls: bool
    credentials: Credentials = field(repr=False)


@dataclass(frozen=True)
class Servers:
    """The servers of one client, and how it spreads calls over them."""

    addresses: tuple[Address, ...]  # as listed; empty for a dns:/// name
    policy: str = LEAST_LOADED
    weights: tuple[float, ...] = ()  # one per address, for WEIGHTED
    dns: DnsName | None = None

    @classmethod
    def parse(
        cls,
        server: ServerSpec = None,
        *,
        token: TokenSpec = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        policy: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> Servers:
        """``server`` (else ``$POOL_SERVER``, else the default) as Servers;
        ``ValueError`` saying what is wrong with it.

        ``token`` is one token for every server, or one per entry as written
        (``{"h1:50051": "...", ...}``); ``weights`` (per entry as written)
        imply the ``weighted`` policy.
        """
        from_env = server is None or server == ""
        if from_env:
            server = os.environ.get(SERVER_ENV) or DEFAULT_SERVER
        assert server is not None
        entries = _entries(server)
        where = f"${SERVER_ENV} is {server!r}, which" if from_env else f"server {server!r}"
        if not entries:
            raise ValueError(f"{where} names no server")
        policy = _policy(policy, weights)

        def credentials(entry: str) -> Credentials:
            if isinstance(token, Mapping):
                if entry not in token:
                    raise ValueError(f"token has no entry for server {entry!r}")
                return Credentials.resolve(token[entry], tls_ca, tls_cert, tls_key)
            return Credentials.resolve(token, tls_ca, tls_cert, tls_key)

        several = len(entries) > 1 or entries[0].startswith(DNS_PREFIX)
        if several and any(Address.parse(e).backend for e in entries if not _is_dns(e)):
            raise ValueError(f"{where} names a backend (local, celery://...), which stands alone")
        if entries[0].startswith(DNS_PREFIX):
            if len(entries) > 1:
                raise ValueError(f"{where} has a dns:/// name, which stands alone")
            return cls((), policy, dns=_dns_name(entries[0], credentials(entries[0])))
        single_where = where if from_env and not several else ""
        addresses = tuple(
            Address.parse(entry, credentials(entry), keepalive=several, where=single_where)
            for entry in entries
        )
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"{where} names a server twice")
        return cls(addresses, policy, _weights(entries, weights) if weights else ())

    @property
    def single(self) -> Address | None:
        """The one address, when there is only one (its calls need no choosing)."""
        return self.addresses[0] if len(self.addresses) == 1 else None

    def __str__(self) -> str:
        if self.dns is not None:
            scheme = "grpcs://" if self.dns.tls else ""
            return f"{DNS_PREFIX}{scheme}{self.dns.host}:{self.dns.port}"
        return ",".join(str(address) for address in self.addresses)


def _policy(policy: str | None, weights: Mapping[str, float] | None) -> str:
    if policy is None:
        policy = WEIGHTED if weights else LEAST_LOADED
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if (policy == WEIGHTED) != bool(weights):
        raise ValueError("the weighted policy and weights={server: weight} go together")
    return policy


def _entries(server: str | Sequence[str]) -> list[str]:
    parts = server.split(",") if isinstance(server, str) else list(server)
    return [part.strip() for part in parts if part.strip()]


def _is_dns(entry: str) -> bool:
    return entry.startswith(DNS_PREFIX)


def _dns_name(entry: str, credentials: Credentials) -> DnsName:
    rest = entry.removeprefix(DNS_PREFIX)
    tls = rest.startswith("grpcs://")
    host, sep, port = rest.removeprefix("grpcs://").removeprefix("grpc://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not dns:///host:port (or dns:///grpcs://host:port)")
    return DnsName(host.strip("[]"), int(port), tls, credentials)


def _weights(entries: list[str], weights: Mapping[str, float]) -> tuple[float, ...]:
    unknown = set(weights) - set(entries)
    if unknown:
        raise ValueError(f"weights name servers that are not listed: {sorted(unknown)}")
    missing = [entry for entry in entries if entry not in weights]
    if missing:
        raise ValueError(f"weights has no weight for {missing}")
    bad = {entry: w for entry, w in weights.items() if not w > 0}
    if bad:
        raise ValueError(f"weights must be positive numbers: {bad}")
    return tuple(float(weights[entry]) for entry in entries)


async def resolve(name: DnsName) -> tuple[Address, ...]:
    """Every address ``name`` resolves to now, as one Address each; an empty
    answer or a failed lookup is ServerUnavailableError's business (raised
    as OSError here)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name.host, name.port, type=socket.SOCK_STREAM
    )
    hosts = {(info[4][0], info[0] == socket.AF_INET6) for info in infos}
    targets = sorted(f"[{ip}]:{name.port}" if v6 else f"{ip}:{name.port}" for ip, v6 in hosts)
    return tuple(
        Address(
            target,
            name.tls,
            name.credentials,
            keepalive=True,
            tls_name=name.host if name.tls else "",
        )
        for target in targets
    )
