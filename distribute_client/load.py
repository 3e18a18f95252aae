"""``pool-client load``: an open-loop load generator.

Calls are started at fixed intended times, whatever is outstanding (the
wrk2 / HdrHistogram method): every ``1/rps`` s, or with exponential gaps of
mean ``1/rps`` (Poisson arrivals). A call due while ``max_in_flight`` are
outstanding is dropped (counted, never sent), never delayed, so a slow server
cannot slow the generator down and hide its own slowness (coordinated
omission). Each call's latency is measured twice: from its intended time
(corrected, what a user arriving then sees) and from the moment its task
started (uncorrected). The two differ by the generator's own lag, which is
reported too: a large lag means the generator, not the server, was late.

    plan = Plan(rps=50, duration=10)
    report = run(remote_call(parse_function("sleep:10")), plan)
    print(format_report(report))

Only the public client API is used: each call is ``await f.async_run(...)``
of a ``compute_this`` function, pickled inside its own task.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import itertools
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvloop
from hdrh.histogram import HdrHistogram

from distribute_client import compute_this, load_functions

Arrival = Literal["const", "poisson"]

DEFAULT_MAX_IN_FLIGHT = 10_000
# After the last call is started, outstanding calls get this long to finish;
# those still out are cancelled and counted as unfinished. Long enough for a
# backlog of a few seconds to drain, short enough that an overloaded server
# does not keep the report waiting.
DEFAULT_DRAIN_S = 10.0
# Latencies are kept in microseconds, from 1 us to an hour (longer ones are
# counted as an hour), to 3 significant digits (0.1%).
LOWEST_US = 1
HIGHEST_US = 3600 * 1_000_000
DIGITS = 3
# Each second of the timeline keeps its own histogram while its calls are
# out: 2 digits (1%) is plenty for its p99 and takes a seventh of the memory.
SECOND_DIGITS = 2
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Below this fraction of the offered rate the server did not keep up.
KEPT_UP = 0.95


@dataclass(frozen=True)
class LoadFunction:
    """What each call runs: ``function(*args)``, named as ``--function`` spells it."""

    name: str
    function: Callable[..., object]
    args: tuple[object, ...] = ()


def parse_function(text: str) -> LoadFunction:
    """``noop``, ``sleep:MS``, ``payload:BYTES`` or ``MODULE:FUNCTION`` (imported
    here, called with no arguments); ValueError says what is wrong."""
    kind, sep, value = text.partition(":")
    if text == "noop":
        return LoadFunction(text, load_functions.noop)
    if kind == "sleep" and sep:
        milliseconds = _number(value, float, f"sleep:MS needs MS in milliseconds, not {value!r}")
        return LoadFunction(text, load_functions.sleep, (milliseconds,))
    if kind == "payload" and sep:
        size = _number(value, int, f"payload:BYTES needs a whole number of bytes, not {value!r}")
        return LoadFunction(text, load_functions.payload, (bytes(size),))
    if not sep or not kind or not value:
        raise ValueError(
            f"{text!r} is not noop, sleep:MS, payload:BYTES or MODULE:FUNCTION "
            "(e.g. sleep:50, mypkg.jobs:ping)"
        )
    return LoadFunction(text, _import(kind, value))


def _number(text: str, kind: type[float] | type[int], message: str) -> Any:
    try:
        number = kind(text)
    except ValueError:
        raise ValueError(message) from None
    if not 0 <= number < math.inf:
        raise ValueError(message)
    return number


def _import(module_name: str, name: str) -> Callable[..., object]:
    """``module_name.name``, imported as ``python -m`` would: with the working
    directory on the path."""
    path = list(sys.path)
    sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # not found, or it raised while importing
        raise ValueError(f"cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    finally:
        sys.path[:] = path
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{module_name} has no function {name!r}")
    result: Callable[..., object] = function
    return result


def remote_call(
    load_function: LoadFunction,
    server: str | None = None,
    token: str | None = None,
    timeout: float | None = None,
) -> Callable[[], Awaitable[object]]:
    """One call of ``load_function`` on ``server``, as a coroutine to await each time."""
    remote = compute_this(server, token=token, timeout=timeout)(load_function.function)
    args = load_function.args

    def call() -> Awaitable[object]:
        return remote.async_run(*args)

    return call


@dataclass(frozen=True)
class Plan:
    """When calls are due: ``rps`` a second for ``warmup`` + ``duration`` seconds;
    those of the warmup are sent but not counted."""

    rps: float
    duration: float
    warmup: float = 0.0
    arrival: Arrival = "const"
    seed: int | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    drain: float = DEFAULT_DRAIN_S

    def __post_init__(self) -> None:
        if not (self.rps > 0 and self.duration > 0 and self.warmup >= 0):
            raise ValueError("rps and duration must be above 0, warmup 0 or more")
        if self.max_in_flight < 1 or self.drain < 0:
            raise ValueError("max_in_flight must be 1 or more, drain 0 or more")

    @property
    def end(self) -> float:
        return self.warmup + self.duration

    def intended_times(self) -> Iterator[float]:
        """Each call's intended start, in seconds from the run's start."""
        if self.arrival == "const":
            # i / rps, not a running sum: no drift over a long run.
            times: Iterator[float] = (i / self.rps for i in itertools.count())
        else:
            rng = random.Random(self.seed)
            times = itertools.accumulate(rng.expovariate(self.rps) for _ in itertools.count())
        return itertools.takewhile(lambda t: t < self.end, times)


def _histogram(digits: int = DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def _record(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(round(seconds * 1e6), LOWEST_US), HIGHEST_US))


@dataclass
class _Second:
    """One second of the measured window, by the calls' intended times."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    outstanding: int = 0
    past: bool = False  # no more calls are due in it
    histogram: HdrHistogram | None = field(default_factory=lambda: _histogram(SECOND_DIGITS))
    p99_ms: float | None = None

    def close(self) -> None:
        """Keep the p99 alone once no call of this second is out."""
        if self.histogram is not None:
            self.p99_ms = _percentiles(self.histogram, (99.0,)).get("p99")
            self.histogram = None


class Recorder:
    """Counts and histograms of the calls whose intended time is in the
    measured window (``plan.warmup`` to ``plan.end``)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.corrected = _histogram()
        self.uncorrected = _histogram()
        self.lag = _histogram()
        self.sent = self.ok = self.dropped = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.seconds = [_Second() for _ in range(math.ceil(plan.duration))]
        # The first and last returns and intended starts of the window's ok calls.
        self.returned = [math.inf, -math.inf]
        self.intended = [math.inf, -math.inf]
        self._passed = 0  # the seconds before this one are past: no call is due there

    def _index(self, intended: float) -> int:
        return math.floor(intended - self.plan.warmup)

    def _second(self, intended: float) -> _Second | None:
        if not self.plan.warmup <= intended < self.plan.end:
            return None
        return self.seconds[min(self._index(intended), len(self.seconds) - 1)]

    def due(self, intended: float) -> None:
        """A call is due at ``intended``: no more will be for the seconds before it."""
        while self._passed < min(self._index(intended), len(self.seconds)):
            second = self.seconds[self._passed]
            second.past = True
            if second.outstanding == 0:
                second.close()
            self._passed += 1

    def dropped_call(self, intended: float) -> None:
        if (second := self._second(intended)) is not None:
            self.dropped += 1
            second.dropped += 1

    def sent_call(self, intended: float) -> None:
        if (second := self._second(intended)) is not None:
            self.sent += 1
            second.sent += 1
            second.outstanding += 1

    def started(self, intended: float, actual: float) -> None:
        if self._second(intended) is not None:
            _record(self.lag, actual - intended)

    def finished(
        self, intended: float, actual: float, done: float, error: BaseException | None
    ) -> None:
        if (second := self._second(intended)) is None:
            return
        second.outstanding -= 1
        if error is None:
            self.ok += 1
            second.ok += 1
            _record(self.corrected, done - intended)
            _record(self.uncorrected, done - actual)
            if second.histogram is not None:
                _record(second.histogram, done - intended)
            self.returned = [min(self.returned[0], done), max(self.returned[1], done)]
            self.intended = [min(self.intended[0], intended), max(self.intended[1], intended)]
        else:
            self.errors[type(error).__name__] += 1
            second.errors += 1
        if second.outstanding == 0 and second.past:
            second.close()

    def report(self, function: str) -> Report:
        for second in self.seconds:
            second.close()
        plan = self.plan
        offered = (self.sent + self.dropped) / plan.duration
        achieved = self._achieved()
        errors = sum(self.errors.values())
        return Report(
            function=function,
            arrival=plan.arrival,
            rps=plan.rps,
            warmup_s=plan.warmup,
            duration_s=plan.duration,
            max_in_flight=plan.max_in_flight,
            offered_rps=offered,
            achieved_rps=achieved,
            kept_up=achieved >= KEPT_UP * offered,
            sent=self.sent,
            ok=self.ok,
            errors=dict(self.errors.most_common()),
            dropped=self.dropped,
            unfinished=self.sent - self.ok - errors,
            corrected_ms=_summary(self.corrected),
            uncorrected_ms=_summary(self.uncorrected),
            lag_ms={k: v for k, v in _summary(self.lag).items() if k in ("p99", "max")},
            timeline=[
                Second(i, s.sent, s.ok, s.errors, s.dropped, s.p99_ms)
                for i, s in enumerate(self.seconds)
            ],
        )

    def _achieved(self) -> float:
        """The rate at which the window's calls returned ok: ``ok - 1`` over the
        time from the first return to the last, or over the time their intended
        starts spanned if that is longer (the calls were not offered faster).

        Not ``ok / duration``: a server that falls behind answers the window's
        calls late, all of them in the end, and must not count as keeping up;
        nor ``ok`` over the time to the last return, which would take a long
        call's latency for slowness."""
        if self.ok < 2:
            return self.ok / self.plan.duration
        returns = self.returned[1] - self.returned[0]
        starts = self.intended[1] - self.intended[0]
        return (self.ok - 1) / max(returns, starts, 1e-9)


def _percentiles(histogram: HdrHistogram, percentiles: tuple[float, ...]) -> dict[str, float]:
    """``{"p50": ms, ...}``; empty when nothing was recorded."""
    if histogram.get_total_count() == 0:
        return {}
    values = histogram.get_percentile_to_value_dict(list(percentiles))
    return {f"p{p:g}": values[p] / 1000 for p in percentiles}


def _summary(histogram: HdrHistogram) -> dict[str, float]:
    summary = _percentiles(histogram, PERCENTILES)
    if summary:
        summary["max"] = histogram.get_max_value() / 1000
    return summary


@dataclass(frozen=True)
class Second:
    """One second of the timeline, by the calls' intended times."""

    second: int
    sent: int
    ok: int
    errors: int
    dropped: int
    p99_ms: float | None  # corrected, of the calls that returned


@dataclass(frozen=True)
class Report:
    """What a run measured; latencies in ms of the calls that returned
    (each dict empty when none did)."""

    function: str
    arrival: Arrival
    rps: float
    warmup_s: float
    duration_s: float
    max_in_flight: int
    offered_rps: float  # calls due in the window, a second
    achieved_rps: float
    kept_up: bool  # achieved at least KEPT_UP of offered
    sent: int  # = ok + sum(errors) + unfinished
    ok: int
    errors: dict[str, int]  # by exception class name
    dropped: int  # due while max_in_flight were out: never sent
    unfinished: int  # still out plan.drain after the last start: cancelled
    corrected_ms: dict[str, float]  # from the intended time
    uncorrected_ms: dict[str, float]  # from the actual start
    lag_ms: dict[str, float]  # how late calls started: p99 and max
    timeline: list[Second]


async def run_async(
    call: Callable[[], Awaitable[object]],
    plan: Plan,
    function: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Start ``call()`` at each of ``plan``'s intended times and report on them."""
    recorder = Recorder(plan)
    outstanding: set[asyncio.Task[None]] = set()
    start = clock()

    async def one(intended: float) -> None:
        # uvloop's timers count whole milliseconds and may wake a call up to
        # one early; it counts as started on time.
        actual = max(clock() - start, intended)
        recorder.started(intended, actual)
        error: Exception | None = None
        try:
            await call()
        except Exception as e:  # each one counted by its class; the run goes on
            error = e
        recorder.finished(intended, actual, clock() - start, error)

    for intended in plan.intended_times():
        if (delay := start + intended - clock()) > 0:
            await asyncio.sleep(delay)
        recorder.due(intended)
        if len(outstanding) >= plan.max_in_flight:
            recorder.dropped_call(intended)
            continue
        recorder.sent_call(intended)
        task = asyncio.create_task(one(intended))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    if outstanding:
        _, late = await asyncio.wait(outstanding, timeout=plan.drain)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    return recorder.report(function)


def run(call: Callable[[], Awaitable[object]], plan: Plan, function: str = "") -> Report:
    """:func:`run_async` on a fresh uvloop event loop, from synchronous code."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_async(call, plan, function))


def format_report(report: Report) -> str:
    """The report for people."""
    r = report
    percent = 100 * r.achieved_rps / r.offered_rps if r.offered_rps else 0.0
    lines = [
        f"{r.function}: {r.arrival} arrivals at {r.rps:g}/s for {r.duration_s:g} s"
        f" (after {r.warmup_s:g} s warmup), at most {r.max_in_flight} in flight",
        f"offered {r.offered_rps:.1f}/s, achieved {r.achieved_rps:.1f}/s ({percent:.1f}%)"
        + ("" if r.kept_up else f": below {KEPT_UP:.0%} of it"),
        f"sent {r.sent}: ok {r.ok}, errors {sum(r.errors.values())}, unfinished {r.unfinished};"
        f" dropped {r.dropped}",
    ]
    lines += [f"  {name}: {count}" for name, count in r.errors.items()]
    lines.append("latency ms       p50      p90      p99    p99.9      max")
    for label, summary in (("corrected", r.corrected_ms), ("uncorrected", r.uncorrected_ms)):
        cells = [_ms(summary.get(k)) for k in ("p50", "p90", "p99", "p99.9", "max")]
        lines.append(f"  {label:<11}" + "".join(f"{c:>9}" for c in cells))
    lines.append(
        f"generator lag: p99 {_ms(r.lag_ms.get('p99'))} ms, max {_ms(r.lag_ms.get('max'))} ms"
    )
    lines.append("second   sent     ok errors dropped  p99 ms")
    lines += [
        f"{s.second:>6} {s.sent:>6} {s.ok:>6} {s.errors:>6} {s.dropped:>7} {_ms(s.p99_ms):>7}"
        for s in r.timeline
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
