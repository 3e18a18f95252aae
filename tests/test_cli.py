"""pool-client end to end: JSON calls submitted from the shell, on a real server."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from distribute_client import Client, RemoteError, SerializationError, compute_this
from distribute_client import cli as pool_client

from .conftest import ServerProcess, StartServer

SHELL_JOBS = """
import time
from distribute_client import progress

def steps(n, pause=0.05):
    for i in range(n):
        progress((i + 1) / n, f"step {i + 1} of {n}")
        time.sleep(pause)
    return {"steps": n}

def fail():
    raise ValueError("shell job failed")
"""


@pytest.fixture
def cli_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    """A server whose workers can import ``shell_jobs`` (from their working dir)."""
    (tmp_path / "shell_jobs.py").write_text(SHELL_JOBS)
    return start_server("--workers", "2", cwd=tmp_path)


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", server.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_watch_result(cli_server: ServerProcess) -> None:
    """submit prints an id; watch follows progress to DONE; result prints the value."""
    submitted = cli(cli_server, "submit", "shell_jobs:steps", "4")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    watched = cli(cli_server, "--json", "watch", job_id)
    assert watched.returncode == 0
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert updates[-1]["state"] == "DONE"
    assert {"step 4 of 4"} <= {u["message"] for u in updates}
    result = cli(cli_server, "result", job_id)
    assert (result.returncode, result.stdout) == (0, '{"steps": 4}\n')
    status = cli(cli_server, "status", job_id)
    assert "DONE" in status.stdout and "shell_jobs:steps" in status.stdout


def test_exit_codes_say_what_happened(cli_server: ServerProcess) -> None:
    """Failed jobs exit 1, cancelled 4, unknown ids 5, a missing server 6, bad usage 2."""
    failing = cli(cli_server, "submit", "shell_jobs:fail").stdout.strip()
    failed = cli(cli_server, "result", failing)
    assert failed.returncode == 1 and "shell job failed" in failed.stderr
    slow = cli(cli_server, "submit", "shell_jobs:steps", "1000", "--kwargs", '{"pause": 1}')
    job_id = slow.stdout.strip()
    cancelled = cli(cli_server, "cancel", job_id)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout
    assert cli(cli_server, "result", job_id).returncode == 4
    assert cli(cli_server, "status", "jnope").returncode == 5
    assert cli(cli_server, "submit").returncode == 2
    assert cli(cli_server, "submit", "shell_jobs.fail").returncode == 2  # not MODULE:FUNCTION
    assert cli(cli_server, "submit", "shell_jobs:fail", "--kwargs", "{nope").returncode == 2
    assert cli(cli_server, "jobs", "--state", "BOGUS").returncode == 2
    assert cli(cli_server, "status", job_id, "--json").returncode == 0  # options after the command
    missing = subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", "127.0.0.1:1", "workers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 6 and "no pool-server answered" in missing.stderr


def test_jobs_and_workers_listings(cli_server: ServerProcess) -> None:
    """jobs lists what was submitted; workers lists every slot (JSON for scripts,
    where a job's id is always "id")."""
    submitted = cli(cli_server, "--json", "submit", "shell_jobs:steps", "1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    result = cli(cli_server, "result", job_id, "--json")
    assert json.loads(result.stdout) == {"id": job_id, "value": {"steps": 1}}
    listed = json.loads(cli(cli_server, "--json", "jobs", "--state", "DONE").stdout)
    assert job_id in [job["id"] for job in listed]
    workers = json.loads(cli(cli_server, "--json", "workers").stdout)
    assert [w["id"] for w in workers["workers"]] == [1, 2]


def test_submit_json_is_the_public_path(cli_server: ServerProcess) -> None:
    """Client.submit_json, which pool-client submit uses, runs a function by
    name with JSON arguments; its failures come back as RemoteError."""
    client = Client(cli_server.address)
    job = client.submit_json("shell_jobs:steps", [2], {"pause": 0}, retries=1, timeout=30)
    assert job.result(timeout=30) == {"steps": 2}
    status = job.status()
    assert (status.name, status.max_attempts) == ("shell_jobs:steps", 2)
    failing = client.submit_json("shell_jobs:fail", name="expected to fail")
    with pytest.raises(RemoteError, match="shell job failed"):
        failing.result(timeout=30)
    assert failing.status().name == "expected to fail"
    with pytest.raises(ValueError, match="'shell_jobs' is not 'module:name'"):
        client.submit_json("shell_jobs")
    with pytest.raises(SerializationError, match="not JSON"):
        client.submit_json("shell_jobs:steps", [object()])


# One of each command, with what it needs; none gets as far as a server.
COMMANDS = [
    ["workers"],
    ["submit", "shell_jobs:steps", "1"],
    ["status", "j1"],
    ["result", "j1"],
    ["cancel", "j1"],
    ["watch", "j1"],
    ["logs", "j1"],
    ["jobs"],
    ["batch", "b1"],
    ["load", "--rps", "1", "--duration", "1"],
]


def test_the_command_list_is_complete() -> None:
    """COMMANDS below has every pool-client command, so each is checked."""
    (subcommands,) = [
        action
        for action in pool_client._parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    assert {command[0] for command in COMMANDS} == set(subcommands.choices)


def test_malformed_address_is_a_usage_error_for_every_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --server or $POOL_SERVER that is not host:port exits 2 with one line on
    stderr that names the bad text (and $POOL_SERVER when it came from there),
    before any server is contacted."""
    monkeypatch.delenv("POOL_SERVER", raising=False)
    for command in COMMANDS:
        for argv in (["--server", "localhost", *command], [*command, "--server", "localhost"]):
            assert pool_client.main(argv) == 2, argv
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, (argv, err)
            assert "'localhost' is not host:port" in err
    monkeypatch.setenv("POOL_SERVER", "pool:server")
    for command in COMMANDS:
        assert pool_client.main(command) == 2, command
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, (command, err)
        assert "$POOL_SERVER is 'pool:server'" in err


def test_malformed_address_exits_2_from_the_command_line() -> None:
    """The same through the real entry point: exit status 2, one line, no traceback."""
    bad = subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", "nope", "workers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("pool-client: ") and bad.stderr.count("\n") == 1


def test_result_does_not_unpickle_a_python_submitters_result(
    cli_server: ServerProcess, tmp_path: Path
) -> None:
    """A pickled result whose __reduce__ runs a command is refused without --unpickle."""
    marker = tmp_path / "ran-in-the-reader"

    def booby_trapped(path: str) -> object:
        import os

        class Trap:
            def __reduce__(self) -> tuple[object, tuple[str]]:
                return (os.system, (f"touch {path}",))

        return Trap()

    job = compute_this(cli_server.address)(booby_trapped)(str(marker)).submit()
    job.status()
    refused = cli(cli_server, "result", job.id, "--timeout", "30")
    assert refused.returncode == 2, refused.stderr
    assert "is a pickle" in refused.stderr and "--unpickle" in refused.stderr
    assert not marker.exists()
    with pytest.raises(SerializationError, match="not unpickled"):
        Client(cli_server.address).job(job.id).result(timeout=30, unpickle=False)
    assert not marker.exists()

    trusted = cli(cli_server, "result", job.id, "--unpickle")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists()  # the reader ran it: why it takes --unpickle


def test_token_file_option(cli_server: ServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "client-token"
    token_file.write_text("not-the-token\n")
    refused = cli(cli_server, "workers", "--token-file", str(token_file))
    assert refused.returncode == 7, refused.stderr
    assert "AuthenticationError" in refused.stderr and "not-the-token" not in refused.stderr
    missing = cli(cli_server, "--token-file", str(tmp_path / "nowhere"), "workers")
    assert missing.returncode == 2 and "cannot read the token file" in missing.stderr


def test_jobs_says_when_it_stops_at_its_limit(cli_server: ServerProcess) -> None:
    """jobs shows the newest --limit N (default 50) and says on stderr that
    there are more; with all of them shown it says nothing."""
    ids = [cli(cli_server, "submit", "shell_jobs:steps", "0").stdout.strip() for _ in range(3)]
    cut = cli(cli_server, "jobs", "--limit", "2")
    assert cut.returncode == 0, cut.stderr
    assert [line.split()[0] for line in cut.stdout.splitlines()] == ids[:0:-1]
    assert cut.stderr == (
        "pool-client: showing the newest 2 jobs, and there are more; --limit N for more\n"
    )
    whole = cli(cli_server, "--json", "jobs", "--limit", "3")
    assert (whole.returncode, whole.stderr) == (0, "")
    assert [job["id"] for job in json.loads(whole.stdout)] == ids[::-1]
    default = pool_client._parser().parse_args(["jobs"])
    assert default.limit == pool_client.DEFAULT_JOBS_LIMIT == 50
    for bad in ("0", "-1", "many", "10001"):
        refused = cli(cli_server, "jobs", "--limit", bad)
        assert refused.returncode == 2 and "from 1 to 10000" in refused.stderr, bad


def test_state_is_read_in_any_case(cli_server: ServerProcess) -> None:
    """--state running (or timed-out) means RUNNING (TIMED_OUT); a state that
    is none of them is a usage error that lists them."""
    job_id = cli(cli_server, "submit", "shell_jobs:steps", "0").stdout.strip()
    assert cli(cli_server, "result", job_id).returncode == 0
    for spelling in ("done", "Done", "DONE"):
        listed = cli(cli_server, "--json", "jobs", "--state", spelling)
        assert listed.returncode == 0, listed.stderr
        assert [job["id"] for job in json.loads(listed.stdout)] == [job_id]
    assert cli(cli_server, "jobs", "--state", "timed-out").stdout == ""
    bogus = cli(cli_server, "jobs", "--state", "finished")
    assert bogus.returncode == 2 and bogus.stdout == ""
    assert "'finished' is not a job state: QUEUED, RUNNING, DONE, FAILED, CANCELLED" in (
        bogus.stderr
    )


def test_json_errors_are_json(cli_server: ServerProcess) -> None:
    """With --json every error is one JSON object on stderr, with its kind
    and the same exit code as without it."""
    failing = cli(cli_server, "submit", "shell_jobs:fail").stdout.strip()
    cases = [
        (["result", failing], 1, "job-failed", "ValueError", "shell job failed"),
        (["status", "jnope"], 5, "not-found", "JobNotFoundError", "no job 'jnope'"),
        (["jobs", "--state", "nope"], 2, "usage", "UsageError", "'nope' is not a job state"),
        (["submit", "math.factorial"], 2, "usage", "UsageError", "did you mean math:factorial"),
        (["--server", "nope", "workers"], 2, "usage", None, "'nope' is not host:port"),
        (["--server", "127.0.0.1:1", "workers"], 6, "unavailable", "ServerUnavailableError", ""),
    ]
    for args, code, kind, type_name, message in cases:
        plain = cli(cli_server, *args)
        as_json = cli(cli_server, *args, "--json")
        assert plain.returncode == as_json.returncode == code, (args, as_json.stderr)
        assert as_json.stdout == "" and as_json.stderr.count("\n") == 1, args
        error = json.loads(as_json.stderr)["error"]
        assert (error["kind"], error["type"], error["exit_code"]) == (kind, type_name, code)
        assert message in error["message"], (args, error)
        assert message in plain.stderr and not plain.stderr.startswith("{"), args


def test_submit_checks_the_function_name_before_sending(cli_server: ServerProcess) -> None:
    """math.factorial (a dot for the colon) is refused before anything is
    sent, with the colon form suggested; math:factorial runs."""
    dotted = cli(cli_server, "submit", "math.factorial", "20")
    assert (dotted.returncode, dotted.stdout) == (2, "")
    assert "'math.factorial' is not MODULE:FUNCTION; did you mean math:factorial?" in (
        dotted.stderr
    )
    for bad in ("math:", ":factorial", "math:fact orial", "ma th:factorial", "factorial"):
        refused = cli(cli_server, "submit", bad)
        assert refused.returncode == 2 and "is not MODULE:FUNCTION" in refused.stderr, bad
    assert cli(cli_server, "--json", "jobs").stdout == "[]\n"  # nothing was submitted
    job_id = cli(cli_server, "submit", "math:factorial", "20").stdout.strip()
    assert cli(cli_server, "result", job_id).stdout == "2432902008176640000\n"


def test_a_timed_out_job_and_giving_up_waiting_exit_differently(
    cli_server: ServerProcess,
) -> None:
    """3: this client stopped waiting (the job goes on); 9: the job ran past
    its own time limit and is TIMED_OUT."""
    slow = ["shell_jobs:steps", "1000", "--kwargs", '{"pause": 0.1}']
    running = cli(cli_server, "submit", *slow).stdout.strip()
    waited = cli(cli_server, "result", running, "--timeout", "0.2")
    assert waited.returncode == pool_client.EXIT_TIMEOUT == 3, waited.stderr
    assert cli(cli_server, "cancel", running).returncode == 0
    limited = cli(cli_server, "submit", *slow, "--timeout", "0.3").stdout.strip()
    timed_out = cli(cli_server, "result", limited)
    assert timed_out.returncode == pool_client.EXIT_JOB_TIMED_OUT == 9, timed_out.stderr
    assert "JobTimedOutError" in timed_out.stderr
    assert cli(cli_server, "watch", limited).returncode == 9
    assert "TIMED_OUT" in cli(cli_server, "status", limited).stdout
    help_text = cli(cli_server, "--help").stdout
    assert "9  the job ran past its own time limit" in help_text
    assert "3  not finished in time: you stopped waiting" in help_text
