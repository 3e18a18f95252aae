"""The committed gRPC modules in pool_proto/ match proto/*.proto (as `make proto` makes them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("pool.proto", "orca.proto", "challenge.proto")
GENERATED = (
    *("pool_pb2.py", "pool_pb2.pyi", "pool_pb2_grpc.py"),
    *("orca_pb2.py", "orca_pb2.pyi"),  # no service: its _grpc module is empty, not committed
    *("challenge_pb2.py", "challenge_pb2.pyi", "challenge_pb2_grpc.py"),
)


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    """Regenerating from the .proto gives the committed files byte for byte."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-Ipool_proto={ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *(str(ROOT / "proto" / name) for name in PROTOS),
        ],
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "pool_proto" / name).read_text()
        committed = (ROOT / "pool_proto" / name).read_text()
        assert fresh == committed, f"pool_proto/{name} is stale: regenerate it with `make proto`"
