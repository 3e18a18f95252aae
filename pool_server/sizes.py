"""Sizes of memory as people write them on a command line: ``512M``, ``2G``,
``1.5GiB``, ``300000000``.

The single letters and the ``i`` units are powers of 1024, as in systemd's
``MemoryMax=``, Docker's ``--memory`` and Java's ``-Xmx``: a memory limit
of ``512M`` means 512 MiB to most people who type it. ``KB``, ``MB``,
``GB`` and ``TB`` are the SI powers of 1000, as their standard says.
Units are case-insensitive; a trailing ``B`` is optional after a binary
unit (``512M``, ``512MiB``, ``512m``).
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "ki": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mi": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gi": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "ti": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

SIZE_HELP = (
    "bytes, or with a unit: 512M, 2G, 1.5GiB (K, M, G, T: powers of 1024; KB, MB, GB: of 1000)"
)


def parse_size(text: str) -> int:
    """The number of bytes ``text`` stands for, rounded down to whole bytes;
    ``ValueError`` with a message saying what a size looks like when it is
    not one, or is not above 0."""
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match[2].lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"{text!r} is not a size: give {SIZE_HELP}")
    size = math.floor(float(match[1]) * unit)
    if size < 1:
        raise ValueError(f"{text!r} is not a size above 0 bytes")
    return size


def format_size(size: int) -> str:
    """``size`` bytes for a log line or a message: ``312.5 MiB``, ``4 KiB``, ``17 B``."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(size) >= unit:
            return f"{size / unit:.4g} {name}"
    return f"{size} B"
