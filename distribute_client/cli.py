"""``pool-client``: jobs and workers of a pool-server, from the shell.

    pool-client workers
    pool-client submit mypkg.sims:run 42 '{"steps": 10}' --kwargs '{"seed": 7}'
    pool-client status JOB_ID | result JOB_ID | cancel JOB_ID | watch JOB_ID
    pool-client logs JOB_ID [--follow]
    pool-client result --unpickle BATCH_ID    (or a map chunk's JOB_ID)
    pool-client cancel --batch BATCH_ID
    pool-client jobs --state RUNNING
    pool-client batch BATCH_ID
    pool-client load --rps 50 --duration 10 --function sleep:10

``submit`` sends a JSON call: the function is imported *on the server* by
name, each ARG is a JSON value (text that is not JSON is taken as a string),
so no pickling happens here; ``result`` reads JSON results, and pickled ones
(submitted from Python) only with ``--unpickle``. ``result`` of a map
chunk's job or of a batch prints one line per call in input order: its value
as JSON, or ``error: Type: message`` where it raised (exit 1 if any did).
``jobs`` lists the newest 50 (``--limit N`` for more) and says on stderr
when there are more than it shows.
``watch`` draws a live bar (progress, state, message) on stderr when stderr
is a terminal, then prints the final status line; otherwise, and with
``--json``, it prints a line per update. ``logs`` prints what a job printed
(stdout and stderr as they interleaved): of a running job the last 64 KiB the
server keeps, and with ``--follow`` all it prints after, as it prints it,
until it finishes; of a finished job its whole captured output, read from
its result (``--unpickle`` for one submitted from Python, as for ``result``).
Output is for people; ``--json`` prints JSON for scripts (a job's id is
``id`` in all of it), and then errors too, as one line on stderr:
``{"error": {"kind": "timed-out", "type": "JobTimedOutError", "message": ...,
"exit_code": 9}}``.

Exit codes (the error kind ``--json`` gives each in brackets):

  0  done
  1  the job failed; its error is printed (job-failed)
  2  bad usage: a malformed --server or $POOL_SERVER, a function that is not
     MODULE:FUNCTION, a request the server rejected as malformed (usage)
  3  not finished in time: you stopped waiting (result --timeout); the job
     goes on (not-finished)
  4  the job was cancelled (cancelled)
  5  no such job or batch (not-found)
  6  no server, or it is shutting down or cannot reach its journal (unavailable)
  7  the server refused the token, or none was found (refused)
  8  ``load`` achieved less than 95% of the rate it offered (slow)
  9  the job ran past its own time limit, TIMED_OUT (timed-out)

Only the public client API is used here: what this tool does, a script can.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from tqdm import tqdm

from distribute_client import (
    AuthenticationError,
    BatchStatus,
    CallTimeoutError,
    Client,
    Job,
    JobCancelledError,
    JobNotFoundError,
    JobStatus,
    JobTimedOutError,
    PoolError,
    ProtocolError,
    RemoteError,
    SerializationError,
    ServerUnavailableError,
    WorkerCrashedError,
)
from distribute_client import load as load_generator
from pool_wire.names import JobState
from pool_wire.tokens import parse_tokens

T = TypeVar("T")

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CANCELLED = 4
EXIT_NOT_FOUND = 5
EXIT_UNAVAILABLE = 6
EXIT_REFUSED = 7
EXIT_SLOW = 8
EXIT_JOB_TIMED_OUT = 9

# What --json calls each exit code's error.
_ERROR_KINDS = {
    EXIT_JOB_FAILED: "job-failed",
    EXIT_USAGE: "usage",
    EXIT_TIMEOUT: "not-finished",
    EXIT_CANCELLED: "cancelled",
    EXIT_NOT_FOUND: "not-found",
    EXIT_UNAVAILABLE: "unavailable",
    EXIT_REFUSED: "refused",
    EXIT_SLOW: "slow",
    EXIT_JOB_TIMED_OUT: "timed-out",
}

# What ``jobs`` lists without --limit, and the most the server answers.
DEFAULT_JOBS_LIMIT = 50
MAX_JOBS_LIMIT = 10_000

# The most specific class first: the first match decides the exit code.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ServerUnavailableError, EXIT_UNAVAILABLE),
    (AuthenticationError, EXIT_REFUSED),
    # InvalidRequestError: the server refused the request as malformed (and
    # its base, an answer this client cannot read: a version mismatch).
    (ProtocolError, EXIT_USAGE),
    (JobNotFoundError, EXIT_NOT_FOUND),
    (JobCancelledError, EXIT_CANCELLED),
    # The job ran past its own limit, not "this client stopped waiting".
    (JobTimedOutError, EXIT_JOB_TIMED_OUT),
    (CallTimeoutError, EXIT_TIMEOUT),
    (WorkerCrashedError, EXIT_JOB_FAILED),
    (PoolError, EXIT_JOB_FAILED),
)

_EXIT_FOR_STATE = {
    JobState.DONE: EXIT_OK,
    JobState.CANCELLED: EXIT_CANCELLED,
    JobState.TIMED_OUT: EXIT_JOB_TIMED_OUT,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Known before parsing, so that usage errors come as JSON too.
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    parser = _parser(json_errors=as_json)
    args = parser.parse_args(argv)
    if args.command is _submit:
        args.kwargs = _kwargs(parser, args.kwargs)
    try:
        client = Client(args.server, token=_token(args.token_file))
    except ValueError as e:  # a malformed --server, $POOL_SERVER or token file
        return _fail(EXIT_USAGE, "", str(e), as_json)
    try:
        code: int = args.command(client, args)
    except Exception as e:
        if isinstance(e, RemoteError) or not isinstance(e, PoolError):
            # The job's own exception (rebuilt here, or not): named as the job raised it.
            fields = _error_fields(e)
            if as_json:
                return _fail(EXIT_JOB_FAILED, fields["type"], fields["message"], True)
            text = f"the job raised {fields['type']}: {fields['message']}"
            return _fail(EXIT_JOB_FAILED, "", text, False)
        exit_code = next(code for kind, code in _EXIT_CODES if isinstance(e, kind))
        return _fail(exit_code, type(e).__name__, str(e), as_json)
    return code


def _fail(code: int, type_name: str, message: str, as_json: bool) -> int:
    """Print an error on stderr, as one line of text or of JSON, and return ``code``."""
    if as_json:
        error = {"kind": _ERROR_KINDS[code], "type": type_name or None, "message": message}
        print(json.dumps({"error": {**error, "exit_code": code}}), file=sys.stderr, flush=True)
    else:
        print(
            f"pool-client: {type_name}: {message}" if type_name else f"pool-client: {message}",
            file=sys.stderr,
            flush=True,
        )
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors come as a JSON line under ``--json``."""

    def __init__(self, *args: Any, json_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str) -> NoReturn:
        if not self.json_errors:
            super().error(message)
        _fail(EXIT_USAGE, "UsageError", f"{self.prog}: {message}", True)
        sys.exit(EXIT_USAGE)


def _parser(json_errors: bool = False) -> _Parser:
    parser = _Parser(
        prog="pool-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        json_errors=json_errors,
    )
    _add_common(parser, default=None)
    # The same options after the command (`status ID --json`); SUPPRESS keeps a
    # subcommand from overwriting what was given before it.
    common = _Parser(add_help=False)
    _add_common(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, function: Callable[[Client, argparse.Namespace], int], help: str) -> Any:
        sub = commands.add_parser(name, help=help, description=help, parents=[common])
        sub.json_errors = json_errors
        sub.set_defaults(command=function)
        return sub

    workers = command("workers", _workers, "list the worker slots and the queue")
    workers.add_argument(
        "--set",
        metavar="MIN:MAX",
        type=_worker_limits,
        help="first let the pool have MIN to MAX workers (an admin token); MIN:MIN fixes it",
    )
    submit = command("submit", _submit, "submit MODULE:FUNCTION(ARG...) as a job")
    submit.add_argument("function", metavar="MODULE:FUNCTION", type=_function_name)
    submit.add_argument("args", nargs="*", metavar="ARG", help="a JSON value per argument")
    submit.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    submit.add_argument("--retries", type=int, default=0, help="attempts after a crash")
    submit.add_argument("--timeout", type=float, default=0.0, help="limit per attempt, seconds")
    for name, function, help in (
        ("status", _status, "show a job's state and progress"),
        ("result", _result, "wait for a job (or a batch) and print its result(s)"),
        ("cancel", _cancel, "cancel a job"),
        ("watch", _watch, "follow a job's progress until it finishes"),
        ("logs", _logs, "print what a job printed; --follow streams it as it runs"),
    ):
        sub = command(name, function, help)
        if name == "cancel":
            sub.add_argument("job_id", metavar="JOB_ID", nargs="?")
            sub.add_argument(
                "--batch",
                metavar="BATCH_ID",
                help="cancel every unfinished job of this batch instead (a durable map's, "
                "whose id the map logged when it started)",
            )
        else:
            sub.add_argument(
                "job_id",
                metavar="BATCH_OR_JOB_ID" if name == "result" else "JOB_ID",
                help="a job's id; for result, also a batch's (each call of a map on a line)",
            )
        if name == "logs":
            sub.add_argument(
                "--follow",
                "-f",
                action="store_true",
                help="keep printing what it prints until it finishes (exit code as for watch)",
            )
        if name in ("result", "logs"):
            sub.add_argument(
                "--unpickle",
                action="store_true",
                help="also read results submitted from Python, which are pickles: unpickling "
                "runs code the submitter chose (JSON results never need it)",
            )
        if name == "result":
            sub.add_argument("--timeout", type=float, help="give up after this many seconds")
    jobs = command("jobs", _jobs, "list jobs, newest first")
    jobs.add_argument(
        "--state",
        type=_job_state,
        metavar="STATE",
        help=f"only jobs in this state, in any case: {', '.join(s.value for s in JobState)}",
    )
    jobs.add_argument("--batch", help="only jobs of this batch")
    jobs.add_argument(
        "--limit",
        type=_jobs_limit,
        default=DEFAULT_JOBS_LIMIT,
        metavar="N",
        help=f"list at most N jobs, 1 to {MAX_JOBS_LIMIT} (default: %(default)s); "
        "a line on stderr says when there are more",
    )
    batch = command("batch", _batch, "show a batch's completion")
    batch.add_argument("batch_id", metavar="BATCH_ID")
    _add_load(command("load", _load, "offer calls at a fixed rate and report the latencies"))
    return parser


def _add_load(load: argparse.ArgumentParser) -> None:
    load.add_argument("--rps", type=_positive, required=True, help="calls offered a second")
    load.add_argument(
        "--duration", type=_positive, required=True, help="seconds measured, after the warmup"
    )
    load.add_argument(
        "--warmup", type=_not_negative, default=0.0, help="seconds sent first and not counted"
    )
    load.add_argument(
        "--arrival",
        choices=["const", "poisson"],
        default="const",
        help="calls every 1/RPS s, or exponential gaps of mean 1/RPS (default: const)",
    )
    load.add_argument("--seed", type=int, help="seed of the poisson arrivals")
    load.add_argument(
        "--function",
        type=_load_function,
        default=load_generator.parse_function("noop"),
        metavar="noop|sleep:MS|payload:BYTES|MODULE:FUNCTION",
        help="what each call runs; MODULE:FUNCTION is imported here (the working directory "
        "on the path) and called with no arguments (default: noop)",
    )
    load.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=load_generator.DEFAULT_MAX_IN_FLIGHT,
        help="a call due while this many are out is dropped, not sent (default: %(default)s)",
    )
    load.add_argument(
        "--timeout", type=_positive, help="each call's deadline, seconds (default: none)"
    )
    load.add_argument(
        "--drain",
        type=_not_negative,
        default=load_generator.DEFAULT_DRAIN_S,
        help="seconds calls still out after the last start get to finish; then they are "
        "cancelled and counted as unfinished (default: %(default)s)",
    )


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--server",
        default=default,
        help="host:port, or grpcs://host:port for TLS; several as a comma list, or "
        "dns:///name:port for every address of a name (default: $POOL_SERVER, else "
        "127.0.0.1:50051); TLS files from $POOL_TLS_CA, $POOL_TLS_CERT and $POOL_TLS_KEY",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=default,
        help="send the first token of this file (default: $POOL_TOKEN, $POOL_TOKEN_FILE, "
        "else the default state dir's token file)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print JSON for scripts",
    )


def _workers(client: Client, args: argparse.Namespace) -> int:
    if args.set is not None:
        client.set_worker_limits(*args.set)
    status = client.status()
    if args.json:
        _print_json(dataclasses.asdict(status))
        return EXIT_OK
    limits = f"{status.min_workers}..{status.max_workers}"
    print(
        f"{len(status.workers)} workers (limits {limits}), "
        f"queue {status.queue_length}/{status.queue_capacity}"
    )
    for w in status.workers:
        line = (
            f"  worker {w.id}: {w.state:8} pid {w.pid:<7} {w.jobs_done} jobs, "
            f"{w.restarts} restarts, {w.recycles} recycles"
        )
        if w.rss_bytes:
            line += f", RSS {w.rss_bytes / (1 << 20):.0f} MiB"
        if w.last_exit_reason:
            line += f", last exit: {w.last_exit_reason}"
        print(line)
    return EXIT_OK


def _worker_limits(text: str) -> tuple[int, int]:
    low, colon, high = text.partition(":")
    try:
        if not colon:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MIN:MAX (two whole numbers, e.g. 1:8)"
        ) from None


def _token(path: Path | None) -> str | None:
    """The first token of ``path``; None (the default lookup) without one."""
    if path is None:
        return None
    try:
        tokens = parse_tokens(path.read_text(), str(path))
    except OSError as e:
        raise ValueError(f"cannot read the token file {path}: {e.strerror}") from None
    if not tokens:
        raise ValueError(f"the token file {path} holds no token")
    return tokens[0].secret


def _function_name(text: str) -> str:
    """``MODULE:FUNCTION``, checked here: the worker would only fail on it later."""
    module, sep, name = text.partition(":")
    if sep and _dotted(module) and _dotted(name):
        return text
    hint = "e.g. mypkg.sims:run"
    if not sep and _dotted(text) and "." in text:
        head, _, tail = text.rpartition(".")
        hint = f"did you mean {head}:{tail}? (a colon before the function)"
    raise argparse.ArgumentTypeError(f"{text!r} is not MODULE:FUNCTION; {hint}")


def _dotted(text: str) -> bool:
    """A dotted name of identifiers: ``mypkg.sims``, ``Model.fit``."""
    return all(part.isidentifier() for part in text.split("."))


def _job_state(text: str) -> JobState:
    try:
        return JobState(text.strip().upper().replace("-", "_"))
    except ValueError:
        states = ", ".join(state.value for state in JobState)
        raise argparse.ArgumentTypeError(f"{text!r} is not a job state: {states}") from None


def _jobs_limit(text: str) -> int:
    return _number(
        text, int, lambda v: 1 <= v <= MAX_JOBS_LIMIT, f"a whole number from 1 to {MAX_JOBS_LIMIT}"
    )


def _load_function(text: str) -> load_generator.LoadFunction:
    try:
        return load_generator.parse_function(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a number above 0")


def _not_negative(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number, 0 or more")


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a whole number above 0")


def _number(text: str, kind: Callable[[str], T], fits: Callable[[T], bool], what: str) -> T:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not fits(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _kwargs(parser: argparse.ArgumentParser, text: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"--kwargs is not JSON: {e}")
    if not isinstance(kwargs, dict):
        parser.error("""--kwargs must be a JSON object, e.g. '{"seed": 7}'""")
    return kwargs


def _submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit_json(
        args.function,
        [_json_value(a) for a in args.args],
        args.kwargs,
        retries=args.retries,
        timeout=args.timeout or None,
    )
    _print_json({"id": job.id}) if args.json else print(job.id)
    return EXIT_OK


def _status(client: Client, args: argparse.Namespace) -> int:
    _show(client.job(args.job_id).status(), args.json)
    return EXIT_OK


def _result(client: Client, args: argparse.Namespace) -> int:
    try:
        return _print_result(client, args)
    except SerializationError as e:
        if args.unpickle:
            raise
        print(f"pool-client: {e}", file=sys.stderr)
        return EXIT_USAGE


def _print_result(client: Client, args: argparse.Namespace) -> int:
    """A job's value; a map chunk's or a whole batch's calls, one line each."""
    try:
        job = client.job(args.job_id)
        in_batch = bool(job.status().batch_id)
    except JobNotFoundError as not_a_job:
        try:
            batch = client.batch(args.job_id)
        except JobNotFoundError:
            raise not_a_job from None
        return _print_items(args, batch.results(timeout=args.timeout, unpickle=args.unpickle))
    if in_batch:
        return _print_items(args, job.results(timeout=args.timeout, unpickle=args.unpickle))
    value = job.result(timeout=args.timeout, unpickle=args.unpickle)
    if args.json:
        _print_json({"id": args.job_id, "value": value})
    else:
        print(value if isinstance(value, str) else json.dumps(value, default=repr))
    return EXIT_OK


def _print_items(args: argparse.Namespace, items: list[Any]) -> int:
    """Each call's value as JSON, or ``error: Type: message`` where it raised;
    exit 1 if any did."""
    failed = [isinstance(item, BaseException) for item in items]
    if args.json:
        entries = [
            {"error": _error_fields(item)} if bad else {"value": item}
            for item, bad in zip(items, failed, strict=True)
        ]
        _print_json({"id": args.job_id, "results": entries})
    else:
        for item, bad in zip(items, failed, strict=True):
            if bad:
                error = _error_fields(item)
                print(f"error: {error['type']}: {error['message']}")
            else:
                print(json.dumps(item, default=repr))
    return EXIT_JOB_FAILED if any(failed) else EXIT_OK


def _error_fields(error: BaseException) -> dict[str, str]:
    """As a failed job's status spells it: ``ValueError``, ``mypkg.Refused``."""
    if isinstance(error, RemoteError):
        type_name, message = error.type_name, error.message
    else:
        kind = type(error)
        type_name, message = f"{kind.__module__}.{kind.__qualname__}", str(error)
    return {"type": type_name.removeprefix("builtins."), "message": message}


def _cancel(client: Client, args: argparse.Namespace) -> int:
    if (args.job_id is None) == (args.batch is None):
        print("pool-client: cancel takes a JOB_ID or --batch BATCH_ID", file=sys.stderr)
        return EXIT_USAGE
    if args.batch is None:
        _show(client.job(args.job_id).cancel(), args.json)
        return EXIT_OK
    _show_batch(client.cancel_batch(args.batch), args.json)
    return EXIT_OK


def _watch(client: Client, args: argparse.Namespace) -> int:
    live = not args.json and sys.stderr.isatty()

    async def follow(job: Job[Any]) -> JobStatus:
        last = None
        bar = _WatchBar(job.id) if live else None
        try:
            async for status in job.watch():
                last = status
                if bar is None:
                    _show(status, args.json)
                else:
                    bar.show(status)
        finally:
            if bar is not None:
                bar.close()
        assert last is not None
        if bar is not None:
            _show(last, False)  # the outcome stays on the screen, and on stdout
        return last

    final = asyncio.run(follow(client.job(args.job_id)))
    return _exit_for_state(final.state)


class _WatchBar:
    """``watch`` on a terminal: one bar of the job's progress, with its state
    and last message beside it, redrawn in place."""

    def __init__(self, job_id: str) -> None:
        self._bar = tqdm(
            total=100,
            desc=job_id,
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}",
        )

    def show(self, status: JobStatus) -> None:
        if status.progress is not None:
            self._bar.n = round(status.progress * 100, 1)
        postfix = str(status.state) + (f" {status.message}" if status.message else "")
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _logs(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job_id)
    try:
        for text in job.logs(follow=args.follow, unpickle=args.unpickle):
            sys.stdout.write(text)
            sys.stdout.flush()
    except SerializationError as e:
        print(f"pool-client: {e}", file=sys.stderr)
        return EXIT_USAGE
    return _exit_for_state(job.status().state) if args.follow else EXIT_OK


def _jobs(client: Client, args: argparse.Namespace) -> int:
    limit: int = args.limit
    # One more than shown, to know whether there are more.
    statuses = client.jobs(state=args.state, batch_id=args.batch, limit=limit + 1)
    if len(statuses) > limit:
        statuses = statuses[:limit]
        print(
            f"pool-client: showing the newest {limit} jobs, and there are more; --limit N for more",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        _print_json([dataclasses.asdict(s) for s in statuses])
        return EXIT_OK
    for status in statuses:
        _show(status, False)
    return EXIT_OK


def _batch(client: Client, args: argparse.Namespace) -> int:
    _show_batch(client.batch(args.batch_id).status, args.json)
    return EXIT_OK


def _show_batch(batch: BatchStatus, as_json: bool) -> None:
    if as_json:
        _print_json(dataclasses.asdict(batch))
        return
    states = ", ".join(f"{count} {state}" for state, count in sorted(batch.states.items()))
    print(f"batch {batch.batch_id}: {batch.percent_done:.1f}% done of {batch.total} ({states})")


def _load(client: Client, args: argparse.Namespace) -> int:
    plan = load_generator.Plan(
        rps=args.rps,
        duration=args.duration,
        warmup=args.warmup,
        arrival=args.arrival,
        seed=args.seed,
        max_in_flight=args.max_in_flight,
        drain=args.drain,
    )
    function: load_generator.LoadFunction = args.function
    # The address as given (None: $POOL_SERVER's), as any compute_this function has it.
    call = load_generator.remote_call(
        function, args.server, token=_token(args.token_file), timeout=args.timeout
    )
    report = load_generator.run(call, plan, function.name)
    if args.json:
        _print_json(dataclasses.asdict(report))
    else:
        print(load_generator.format_report(report), flush=True)
    return EXIT_OK if report.kept_up else EXIT_SLOW


def _show(status: JobStatus, as_json: bool) -> None:
    if as_json:
        _print_json(dataclasses.asdict(status))
        return
    parts = [status.id, status.state]
    if status.progress is not None:
        parts.append(f"{status.progress:.0%}")
    if status.message:
        parts.append(repr(status.message))
    parts.append(f"attempt {status.attempts}/{status.max_attempts}")
    if status.worker_id:
        parts.append(f"worker {status.worker_id}")
    if status.started_at:
        end = status.finished_at or time.time()
        parts.append(f"{end - status.started_at:.1f} s")
    if status.name:
        parts.append(status.name)
    if status.error:
        parts.append(f"error: {status.error}")
    print("  ".join(parts), flush=True)


def _exit_for_state(state: JobState) -> int:
    """The exit code for the state a watched job finished in."""
    return _EXIT_FOR_STATE.get(state, EXIT_JOB_FAILED)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _print_json(data: Any) -> None:
    print(json.dumps(data, default=repr), flush=True)


if __name__ == "__main__":
    sys.exit(main())
