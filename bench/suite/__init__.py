"""One run, many systems: the same workloads on pool-server, its peers and two floors.

``python -m bench [--workers 2] [--quick] [--out bench/results]`` is the entry
point (``bench/__main__.py``). The pieces, and why they are apart:

- ``plan``: the counts for a full or a quick run, and which worker counts each
  system is started with. One function of the command line, so the parent and
  every child agree without passing the plan around.
- ``systems/``: one adapter per system behind the ``System`` protocol in
  ``adapter``; a peer whose library is missing fails to import there and is
  reported as skipped, never silently dropped.
- ``measure``: the workloads, written once against ``System`` so every system
  is timed by the same code.
- ``session``: a child process that starts one system with one worker count,
  runs some workloads and writes one JSON line per figure. Children isolate
  the peers from each other (gRPC is not fork-safe, Ray and Dask start
  services) and let a hung peer be killed without losing the figures it gave.
- ``runner``: the parent side: runs the sessions one after another, kills
  those that stop making progress.
- ``report`` and ``plots``: ``results.md`` and the PNGs, ratios taken within
  the same run.
"""
