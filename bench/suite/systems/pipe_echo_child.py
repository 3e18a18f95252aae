"""The pipe floor's child: reads length-prefixed frames on stdin, writes them back.

Run as ``python -m bench.suite.systems.pipe_echo_child``; exits at EOF.
"""

from __future__ import annotations

import struct
import sys

HEADER = struct.Struct("!Q")


def main() -> None:
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while header := source.read(HEADER.size):
        (size,) = HEADER.unpack(header)
        body = source.read(size)
        sink.write(header + body)
        sink.flush()


if __name__ == "__main__":
    main()
