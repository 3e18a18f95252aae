"""The live dashboard served on the metrics port (``/``).

::

    JobChange ──> Activity.job_changed     task stream, throughput and latency windows,
                                           recent jobs, batch tallies
    every second: Activity.tick            queue length sampled, a window closed, viewers woken
    /state, /events ──> Activity.snapshot  + the pool's workers and the tracker's live jobs, now

``index.html``, ``dashboard.js`` and ``dashboard.css`` are the page: no
build step, nothing from another origin; it reads ``/events`` (a JSON
snapshot a second, server-sent events) and draws with SVG. The server
never unpickles a payload, so a call is named by its job's ``name`` (a
submitted job's function), else ``"call"``.
"""

from __future__ import annotations

from importlib import resources

from pool_server.dashboard.activity import Activity

__all__ = ["Activity", "page_file"]


def page_file(name: str) -> bytes:
    """One of the page's files, as installed with the package."""
    return resources.files(__name__).joinpath(name).read_bytes()
