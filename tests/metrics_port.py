"""Helpers for tests of the metrics port: where it listens, plain HTTP(S)
requests to it, and its metrics parsed as Prometheus parses them."""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .conftest import ServerProcess

_URL_LINE = re.compile(r"metrics and dashboard on (https?://\S+)")


def metrics_url(server: ServerProcess) -> str:
    """The metrics port's URL, as the server logged it at start."""
    match = _URL_LINE.search(server.log())
    assert match is not None, f"no metrics port in the log:\n{server.log()}"
    return match[1]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(
    url: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One GET, redirects not followed; ``token`` goes as a bearer header."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, context=context, timeout=10
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = cookie
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path or "/", headers=headers)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    reply = get(url + "metrics", token=token or os.environ["POOL_TOKEN"], context=context)
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 if it is not there (a series not yet seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
