"""Worker slots in cgroups, so that stopping a slot stops all it started.

A worker and everything it starts share its process group, until a
function's child calls ``setsid()`` (a daemon, ``subprocess.Popen(...,
start_new_session=True)``): then ``killpg`` no longer reaches it, and it
outlived the server (issue 9). A cgroup cannot be left that way: children
stay in their parent's cgroup whatever session they make, and writing ``1`` to
``cgroup.kill`` (Linux 5.14) SIGKILLs every process in it, forks racing the
kill included. So where cgroup v2 is writable, the pool gets::

    <the server's own cgroup>/
        pool-server-<pid>-<start>/    the pool's cgroup; holds no process itself
            worker-1/                 slot 1's worker and all its descendants
            worker-2/                 ...

Only leaves hold processes, which is what cgroup v2's "no internal
processes" rule asks before a controller may be enabled; ``memory`` and
``pids`` are enabled for the slots where the server's cgroup offers them, so
limits per slot can come later. The server itself stays where it was put.

A server killed by SIGKILL cannot clean up, and a child that left its
worker's session keeps running in its slot. The next server started in the
same cgroup kills and removes such a pool cgroup: its name holds the owner's
pid and start time (``/proc/<pid>/stat`` field 22), so a pool cgroup is
stale exactly when no process with that pid and start time exists, even
after the pid was reused, and a live server's is never touched.

Where cgroup v2 is not writable (not root and no delegated subtree, a
read-only ``/sys/fs/cgroup``, cgroup v1 only, a kernel before 5.14) workers
are stopped through their process group alone. What escapes that: a
process a function started that made its own session or process group (or
a double fork that did), until it exits by itself; and, if the server is
killed by SIGKILL, any child of a worker, since no one is left to signal
it (the worker itself still dies: see ``worker_proc.__main__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger("pool_server.cgroup")

# After cgroup.kill, how long the killed processes may take to exit before
# their cgroup can be removed; SIGKILLed processes exit in milliseconds.
REMOVE_TIMEOUT_S = 2.0

# How often to retry removing a cgroup whose processes are still exiting:
# cgroupfs signals "now empty" only with POLLPRI, which asyncio cannot wait
# for, and this wait happens at start and stop only.
REMOVE_RETRY_S = 0.01

# Controllers enabled for the slots where offered: what per-slot limits need.
SLOT_CONTROLLERS = ("memory", "pids")

_POOL_NAME = re.compile(r"pool-server-(\d+)-(\d+)")


class SlotCgroups:
    """One cgroup per worker slot, under one pool cgroup this server owns."""

    def __init__(self, pool: Path, size: int) -> None:
        self.pool = pool
        self._slots = {i: pool / f"worker-{i}" for i in range(1, size + 1)}  # made by _create

    def __repr__(self) -> str:
        return f"<SlotCgroups {self.pool}>"

    def add(self, worker_id: int, pid: int) -> None:
        """Put a new worker in its slot's cgroup, before it runs any call.

        Raises OSError if the kernel refuses; the caller keeps the process
        group as its only means of cleanup. A slot past the pool's size at
        start (its limits were raised) gets its cgroup here."""
        slot = self._slots.get(worker_id)
        if slot is None:
            slot = self.pool / f"worker-{worker_id}"
            slot.mkdir(exist_ok=True)
            self._slots[worker_id] = slot
        (slot / "cgroup.procs").write_text(f"{pid}\n")

    def kill(self, worker_id: int) -> None:
        """SIGKILL every process in the slot, wherever its session."""
        if worker_id in self._slots:
            _kill(self._slots[worker_id])

    async def close(self) -> None:
        """Kill what is left in every slot and remove the pool's cgroups."""
        _kill(self.pool)
        for slot in self._slots.values():
            await _remove_when_empty(slot)
        await _remove_when_empty(self.pool)


async def open_slot_cgroups(size: int) -> SlotCgroups | None:
    """The pool's cgroups, after removing stale ones of dead servers; None
    (process groups only) where cgroup v2 cannot be used, and the log says
    which, and why."""
    try:
        parent = own_cgroup()
        await remove_stale(parent)
        cgroups = _create(parent, size)
    except OSError as e:
        log.info(
            "worker cleanup: by process group, since cgroup v2 is not usable here (%s); "
            "a process a function starts in a new session can outlive its worker",
            e,
        )
        return None
    log.info("worker cleanup: by cgroup.kill, one cgroup per worker slot under %s", cgroups.pool)
    return cgroups


def own_cgroup() -> Path:
    """This process's cgroup v2 directory; OSError if there is none."""
    relative = ""
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            if line.startswith("0::"):
                relative = line[3:].strip()
                break
        else:
            raise OSError("this process is in no cgroup v2 hierarchy")
    for mount_root, mount_point in cgroup2_mounts():
        inside = os.path.relpath(relative, mount_root)
        if not inside.startswith(".."):
            path = Path(mount_point, inside).resolve()
            if path.is_dir():
                return path
    raise OSError(f"its cgroup v2 {relative!r} is not mounted here")


def cgroup2_mounts() -> list[tuple[str, str]]:
    """(root within the hierarchy, mount point) of each cgroup2 mount."""
    mounts = []
    with open("/proc/self/mountinfo") as lines:
        for line in lines:
            fields, _, rest = line.partition(" - ")
            if rest.split(" ", 1)[0] == "cgroup2":
                parts = fields.split(" ")
                mounts.append((parts[3], parts[4]))
    return mounts


def _create(parent: Path, size: int) -> SlotCgroups:
    pool = parent / f"pool-server-{os.getpid()}-{_start_time(os.getpid())}"
    pool.mkdir()
    try:
        if not (pool / "cgroup.kill").exists():
            raise OSError("no cgroup.kill (Linux before 5.14)")
        offered = (pool / "cgroup.controllers").read_text().split()
        wanted = " ".join(f"+{c}" for c in SLOT_CONTROLLERS if c in offered)
        if wanted:
            with contextlib.suppress(OSError):  # limits are optional; cleanup is not
                (pool / "cgroup.subtree_control").write_text(wanted)
        for i in range(1, size + 1):
            (pool / f"worker-{i}").mkdir()
    except OSError:
        for child in pool.glob("worker-*"):
            child.rmdir()
        pool.rmdir()
        raise
    return SlotCgroups(pool, size)


async def remove_stale(parent: Path) -> None:
    """Kill and remove pool cgroups under ``parent`` whose server is gone."""
    for path, slots in _stale_pools(parent):
        _kill(path)
        for slot in slots:
            await _remove_when_empty(slot)
        await _remove_when_empty(path)


def _stale_pools(parent: Path) -> list[tuple[Path, list[Path]]]:
    """Each pool cgroup under ``parent`` whose server is gone, with its slots."""
    stale = []
    for path in parent.iterdir():
        match = _POOL_NAME.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        pid, started = int(match[1]), int(match[2])
        if _start_time(pid) == started:
            continue  # its server is alive
        slots = list(path.glob("worker-*"))
        log.warning(
            "removing the cgroup of server pid %d, which is gone; killing the %d processes "
            "it left behind",
            pid,
            sum(len(_procs(slot)) for slot in slots),
        )
        stale.append((path, slots))
    return stale


def _start_time(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot; 0 if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def _procs(cgroup: Path) -> list[str]:
    try:
        return (cgroup / "cgroup.procs").read_text().split()
    except OSError:
        return []


def _kill(cgroup: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # already removed
        (cgroup / "cgroup.kill").write_text("1")


async def _remove_when_empty(cgroup: Path) -> None:
    """Remove a killed cgroup once its processes have exited (rmdir says
    EBUSY until then); a cgroup that will not empty is logged and left."""
    deadline = time.monotonic() + REMOVE_TIMEOUT_S
    while (error := _try_remove(cgroup)) is not None:
        if time.monotonic() > deadline:
            log.error("cannot remove cgroup %s: %s", cgroup, error)
            return
        await asyncio.sleep(REMOVE_RETRY_S)


def _try_remove(cgroup: Path) -> OSError | None:
    """Remove ``cgroup`` (cgroupfs lives in memory: this never blocks); the
    error if it cannot be removed yet."""
    try:
        cgroup.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        return e
    return None
