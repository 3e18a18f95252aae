"""Code that travels: a helper module beside the script, modules named to
ship, modules imported by reference kept fresh, and the workers' --workdir.
Each client is a real script run as a user runs it, against a real server
started somewhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import SERVER_COMMAND, StartServer

SCRIPT = """
import sys
from distribute_client import compute_this
{imports}

@compute_this(sys.argv[1]{options})
def run(x):
    return {body}

print(run(21).compute())
print(list(run.map(range(3))))
"""


def write(path: Path, text: str) -> Path:
    """Write a source file, with a new size and mtime so no cache takes it for the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    return path


def script(directory: Path, imports: str, body: str, options: str = "") -> Path:
    source = SCRIPT.format(imports=imports, body=body, options=options)
    return write(directory / "script.py", source)


def run_script(
    path: Path, address: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, str(path), address],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_module_beside_the_script_travels_and_is_never_stale(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The server runs elsewhere, without the project; the helper module
    travels with each call, so an edit shows at once, even on a server started
    in the project (which used to serve the module it first imported)."""
    project = tmp_path / "project"
    write(project / "mymodel.py", "SCALE = 2\n\ndef predict(x):\n    return x * SCALE\n")
    path = script(project, "import mymodel", "mymodel.predict(x)", ", depmodules=[mymodel]")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (elsewhere, project):
        server = start_server("--workers", "1", cwd=cwd)
        first = run_script(path, server.address)
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == ["42", "[0, 2, 4]"]
        write(project / "mymodel.py", "SCALE = 3\n\ndef predict(x):\n    return x * SCALE  # v2\n")
        edited = run_script(path, server.address)
        assert edited.returncode == 0, edited.stderr
        assert edited.stdout.splitlines() == ["63", "[0, 3, 6]"]
        assert edited.stderr == ""
        write(project / "mymodel.py", "SCALE = 2\n\ndef predict(x):\n    return x * SCALE\n")


def test_ship_sends_a_module_installed_only_here(start_server: StartServer, tmp_path: Path) -> None:
    """A module from the client's site-packages travels by reference, so the
    server lacks it; the error says to install or ship it, and ship works."""
    site = tmp_path / "client" / "site-packages"
    write(site / "onlyhere.py", "def triple(x):\n    return 3 * x\n")
    server = start_server("--workers", "1")
    missing = run_script(
        script(tmp_path, "import onlyhere", "onlyhere.triple(x)"), server.address, site
    )
    assert missing.returncode == 1
    assert "No module named 'onlyhere'" in missing.stderr
    assert "install it there (depmodules only imports modules" in missing.stderr
    assert "compute_this(ship=[module])" in missing.stderr
    shipped = run_script(
        script(tmp_path, "import onlyhere", "onlyhere.triple(x)", ", ship=[onlyhere]"),
        server.address,
        site,
    )
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout.splitlines() == ["63", "[0, 3, 6]"]


def test_a_module_imported_by_reference_is_reloaded_and_a_different_copy_named(
    start_server: StartServer, tmp_path: Path
) -> None:
    """An installed module on both sides: edited on the server, the worker
    that imported it reloads it; while the client's copy differs, each call
    says so on its stderr; once they match, nothing is said."""
    client_site = tmp_path / "client" / "site-packages"
    server_site = tmp_path / "server" / "site-packages"
    for site in (client_site, server_site):
        write(site / "installed.py", "VERSION = 1\n")
    server = start_server("--workers", "1", env={**os.environ, "PYTHONPATH": str(server_site)})
    path = script(tmp_path, "import installed", "installed.VERSION * x")

    same = run_script(path, server.address, client_site)
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines() == ["21", "[0, 1, 2]"]
    assert same.stderr == ""

    write(server_site / "installed.py", "VERSION = 2  # edited on the server\n")
    differs = run_script(path, server.address, client_site)
    assert differs.returncode == 0, differs.stderr
    assert differs.stdout.splitlines() == ["42", "[0, 2, 4]"]
    assert "reloaded module installed" in differs.stderr
    assert f"module installed here ({server_site / 'installed.py'}) is not the caller's copy" in (
        differs.stderr
    )
    assert "compute_this(ship=[installed])" in differs.stderr

    write(client_site / "installed.py", "VERSION = 2  # edited on the server\n")
    matched = run_script(path, server.address, client_site)
    assert matched.returncode == 0, matched.stderr
    assert matched.stdout.splitlines() == ["42", "[0, 2, 4]"]
    assert matched.stderr == ""


def test_a_function_imported_from_an_edited_module_runs_its_new_code(
    start_server: StartServer, tmp_path: Path
) -> None:
    """``from installed import version``: the worker, which unpickled the
    caller's function with the old ``version``, reloads the module and
    unpickles the function again."""
    client_site = tmp_path / "client" / "site-packages"
    server_site = tmp_path / "server" / "site-packages"
    for site in (client_site, server_site):
        write(site / "versioned.py", "def version():\n    return 1\n")
    server = start_server("--workers", "1", env={**os.environ, "PYTHONPATH": str(server_site)})
    path = script(tmp_path, "from versioned import version", "version() * x")
    first = run_script(path, server.address, client_site)
    assert first.stdout.splitlines() == ["21", "[0, 1, 2]"], first.stderr
    for site in (client_site, server_site):
        write(site / "versioned.py", "def version():\n    return 2  # edited\n")
    edited = run_script(path, server.address, client_site)
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.splitlines() == ["42", "[0, 2, 4]"]
    assert "reloaded module versioned" in edited.stderr
    assert "not the caller's copy" not in edited.stderr


def test_workdir_is_the_workers_cwd_and_first_path_entry(
    start_server: StartServer, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    write(workdir / "data.txt", "from the workdir")
    write(workdir / "workmod.py", "WHERE = 'workmod from the workdir'\n")
    server = start_server("--workers", "1", "--workdir", str(workdir))
    body = (
        "(os.getcwd(), sys.path[0], open('data.txt').read(), "
        "importlib.import_module('workmod').WHERE)"
    )
    path = script(tmp_path, "import importlib, os", body)
    done = run_script(path, server.address)
    assert done.returncode == 0, done.stderr
    expected = (str(workdir), str(workdir), "from the workdir", "workmod from the workdir")
    assert done.stdout.splitlines()[0] == repr(expected)


def test_a_workdir_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [*SERVER_COMMAND, "--port", "0", "--workdir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"--workdir {tmp_path / 'nowhere'} is not a directory" in done.stderr


@pytest.mark.parametrize("bad", ["'os'", "distribute_client"])
def test_ship_takes_local_modules_only(bad: str) -> None:
    import distribute_client
    from distribute_client import compute_this

    module = distribute_client if bad == "distribute_client" else bad
    with pytest.raises((TypeError, ValueError), match="ship"):
        compute_this(ship=[module])(len)  # type: ignore[list-item]
