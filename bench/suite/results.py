"""The records of a run, and the look-ups the report and the plots share.

A record is one JSON line from a session (or one the parent wrote for a
session it had to kill): ``{"system", "workers", "event" | "workload", ...}``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.suite.systems import FLOORS, REGISTRY

Record = dict[str, Any]


@dataclass
class Results:
    plan_workers: int
    quick: bool
    systems: list[str]  # registry keys, in table order
    records: list[Record] = field(default_factory=list)
    elapsed_s: float | None = None
    machine: str = ""  # what ran it, and when
    revision: str = ""  # the commit measured

    def save(self, path: Path) -> None:
        """Everything the report is made from, so it can be re-rendered (``--rerender``)."""
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Results:
        return cls(**json.loads(path.read_text()))

    def started(self, system: str) -> Record | None:
        """The first ``started`` record of a system (name, kind, version)."""
        return next(
            (r for r in self.records if r["system"] == system and r.get("event") == "started"),
            None,
        )

    def skipped(self, system: str) -> str | None:
        """Why a system gave no figures at all, if it gave none."""
        if self.started(system) is not None:
            return None
        for r in self.records:
            if r["system"] == system and r.get("event") == "skipped":
                return str(r["reason"])
        return "no session ran"

    def workload(self, system: str, name: str, workers: int | None = None) -> Record | None:
        """A workload's record at ``workers`` (default: the run's main worker count;
        a floor has one process and one session, whatever the count)."""
        floor = self.kind(system) == "floor"
        wanted = self.plan_workers if workers is None else workers
        for r in self.records:
            if r["system"] == system and r.get("workload") == name:
                if floor or r["workers"] == wanted:
                    return r
        return None

    def figure(self, system: str, name: str, key: str, workers: int | None = None) -> float | None:
        record = self.workload(system, name, workers)
        if record is None or key not in record or record[key] is None:
            return None
        return float(record[key])

    def work_s(self) -> float | None:
        """The scaling workload's CPU time per call in the workers, median over the run."""
        work = sorted(float(r["work_s"]) for r in self.records if "work_s" in r)
        return work[len(work) // 2] if work else None

    def label(self, system: str) -> str:
        return REGISTRY[system].label

    def kind(self, system: str) -> str:
        if system == "pool-server":
            return "ours"
        return "floor" if system in FLOORS else "peer"
