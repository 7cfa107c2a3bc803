"""Shared machinery of the reliability scenarios: the job event and service, worker processes,
the publisher, and the checker that proves no message was lost.

A scenario publishes jobs with unique ids, serves them (in worker processes, see
``_worker.py``, or in the test process), injects a fault, lets the system recover, then checks
the record files: every id completed at least once, none lost, the durable left with nothing
pending and nothing unacked. Duplicates are counted and reported, never failed on.

``AMEBUS_RELIABILITY=full`` selects the full scale; anything else the short one (CI).
``AMEBUS_RELIABILITY_REPORT=path`` appends one JSON line per scenario outcome to ``path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerInfo, StorageType, StreamConfig

from amebus import Event, Route, Service, publish_many

__all__ = [
    "FULL",
    "Job",
    "JobService",
    "Outcome",
    "Recorder",
    "Records",
    "WorkerProcess",
    "close",
    "connect",
    "consumer_info",
    "count_done",
    "ensure_stream",
    "job_ids",
    "publish_jobs",
    "read_records",
    "scaled",
    "settled_consumer",
    "stalls",
    "tally",
    "wait_for",
    "wait_until_done",
]

FULL = os.environ.get("AMEBUS_RELIABILITY", "").lower() == "full"
HERE = Path(__file__).resolve().parent
STREAM = "REL"
DURABLE = "rel"
SUBJECTS = ("rel.>",)


def scaled(short: int, full: int) -> int:
    """``full`` under ``AMEBUS_RELIABILITY=full``, else ``short``."""
    return full if FULL else short


def job_ids(count: int, prefix: str = "j") -> list[str]:
    return [f"{prefix}{index:07d}" for index in range(count)]


# -- the job, its service, and the record store ---------------------------------------------


@attrs.frozen
class Job(Event):
    """One unit of work; ``sleep`` is how long its handler takes."""

    subject_pattern = "rel.job.*"
    event_type = "amebus.reliability.Job"

    id: str
    sleep: float = 0.0

    def subject(self) -> tuple[str, ...]:
        return ("rel", "job", self.id)


class Recorder:
    """Appends ``<kind> <id> <delivery> <unix time> <label>`` lines to a file, unbuffered.

    Each line is one ``write(2)`` on an ``O_APPEND`` descriptor, so a SIGKILL never leaves half
    a line and the lines survive the process (the page cache keeps them; no fsync needed).
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, kind: str, job_id: str, delivery: int) -> None:
        os.write(self._fd, f"{kind} {job_id} {delivery} {time.time():.6f} {self.label}\n".encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _delivery(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 0


class JobService(Service):
    """Records the start and the completion of every job, sleeping ``job.sleep`` between."""

    stream = STREAM
    durable = DURABLE
    recorder: ClassVar[Recorder | None] = None
    crash_on: ClassVar[frozenset[str]] = frozenset()
    """Ids whose handler kills the process (``os._exit(3)``) once it has recorded its start."""

    @Route(Job)
    async def job(self, job: Job, msg: Msg) -> None:
        recorder = type(self).recorder
        delivery = _delivery(msg)
        if recorder is not None:
            recorder.write("start", job.id, delivery)
        if job.id in type(self).crash_on:
            os._exit(3)
        if job.sleep:
            await asyncio.sleep(job.sleep)
        if recorder is not None:
            recorder.write("done", job.id, delivery)


# -- reading the records ----------------------------------------------------------------------


@attrs.frozen
class Line:
    kind: str
    id: str
    delivery: int
    at: float
    label: str


@attrs.define
class Records:
    """Every record line of a scenario, grouped."""

    lines: list[Line] = attrs.Factory(list)

    def done(self) -> dict[str, list[Line]]:
        out: dict[str, list[Line]] = {}
        for line in self.lines:
            if line.kind == "done":
                out.setdefault(line.id, []).append(line)
        return out

    def started(self) -> dict[str, list[Line]]:
        out: dict[str, list[Line]] = {}
        for line in self.lines:
            if line.kind == "start":
                out.setdefault(line.id, []).append(line)
        return out

    def done_ids(self) -> set[str]:
        return {line.id for line in self.lines if line.kind == "done"}

    def redelivered(self) -> int:
        """Ids started on a second (or later) delivery."""
        return len({line.id for line in self.lines if line.kind == "start" and line.delivery > 1})

    def stalled(self, moment: float, until: float | None = None) -> float:
        """The longest stretch without a completed job from ``moment`` to ``until`` (or to
        the last completion): how long the fault at ``moment`` stopped the work."""
        times = sorted(line.at for line in self.lines if line.kind == "done"
                       and line.at >= moment and (until is None or line.at <= until))
        if not times:
            return float("inf")
        points = [moment, *times]
        return max(b - a for a, b in itertools.pairwise(points))

    def orphans_done_in(self, label: str, moment: float) -> float | None:
        """Seconds from ``moment`` until the last job ``label`` started but never finished
        was completed by someone else (None if it left none)."""
        started = {line.id for line in self.lines if line.kind == "start" and line.label == label}
        finished = {line.id for line in self.lines if line.kind == "done" and line.label == label}
        done = self.done()
        times = [min(line.at for line in done.get(i, []) if line.at > moment) - moment
                 for i in started - finished
                 if any(line.at > moment for line in done.get(i, []))]
        return max(times) if times else None

    def by_label(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.lines:
            if line.kind == "done":
                out[line.label] = out.get(line.label, 0) + 1
        return out


def read_records(directory: Path) -> Records:
    records = Records()
    for path in sorted(directory.glob("*.rec")):
        for raw in path.read_text(errors="replace").splitlines():
            parts = raw.split(" ")
            if len(parts) != 5:
                continue  # never expected: each line is written by one write(2)
            kind, job_id, delivery, at, label = parts
            records.lines.append(Line(kind, job_id, int(delivery), float(at), label))
    return records


def count_done(directory: Path) -> int:
    """Completions recorded so far (duplicates included), cheaply."""
    return sum(path.read_bytes().count(b"done ") for path in directory.glob("*.rec"))


async def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``predicate()`` (sync or async) until it is true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout}s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(poll)


async def wait_until_done(directory: Path, ids: Iterable[str], timeout: float) -> Records:
    """Wait until every id has a ``done`` line; return the records (raises on timeout)."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        if count_done(directory) >= len(wanted):
            records = read_records(directory)
            missing = wanted - records.done_ids()
            if not missing:
                return records
        else:
            missing = None
        if time.monotonic() > deadline:
            records = read_records(directory)
            missing = wanted - records.done_ids()
            msg = (f"{len(missing)} of {len(wanted)} ids never completed within {timeout}s, "
                   f"e.g. {sorted(missing)[:10]}")
            raise AssertionError(msg)
        await asyncio.sleep(0.1)


# -- the server side --------------------------------------------------------------------------


async def _quiet(_: Exception) -> None:
    """Error callback: disconnects are the point of these scenarios."""


async def connect(servers: str | Sequence[str], **options: Any) -> Client:
    """A client that reconnects forever, 100 ms apart, and keeps disconnect noise quiet."""
    settings: dict[str, Any] = {
        "connect_timeout": 2,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.1,
        "error_cb": _quiet,
        "name": "amebus-reliability",
    }
    settings.update(options)
    return await nats.connect(servers=list(servers) if not isinstance(servers, str)
                              else [servers], **settings)


async def close(nc: Client) -> None:
    if nc.is_closed:
        return
    with contextlib.suppress(NatsError, TimeoutError, asyncio.TimeoutError):
        if nc.is_connected:
            await asyncio.wait_for(nc.drain(), 5)
    if not nc.is_closed:
        await nc.close()


async def ensure_stream(nc: Client, name: str = STREAM, subjects: Sequence[str] = SUBJECTS,
                        *, replicas: int = 1) -> None:
    config = StreamConfig(name=name, subjects=list(subjects), storage=StorageType.FILE,
                          num_replicas=replicas)
    await nc.jetstream(timeout=10).add_stream(config)


async def publish_jobs(nc: Client, ids: Sequence[str], *, sleep: Any = 0.0,
                       chunk: int = 2000) -> None:
    """Publish one Job per id (``sleep`` a number or a function of the id), in chunks."""
    js = nc.jetstream(timeout=10)
    for start in range(0, len(ids), chunk):
        jobs = [Job(id=i, sleep=sleep(i) if callable(sleep) else sleep)
                for i in ids[start:start + chunk]]
        await publish_many(js, jobs, timeout=10)


async def consumer_info(nc: Client, stream: str = STREAM, durable: str = DURABLE
                        ) -> ConsumerInfo:
    return await nc.jetstream(timeout=2).consumer_info(stream, durable)


async def settled_consumer(nc: Client, stream: str = STREAM, durable: str = DURABLE, *,
                           timeout: float = 15.0) -> ConsumerInfo:
    """Wait until the durable has num_pending == 0 and num_ack_pending == 0; return its info."""
    deadline = time.monotonic() + timeout
    info: ConsumerInfo | None = None
    while True:
        with contextlib.suppress(NatsError, TimeoutError, asyncio.TimeoutError):
            info = await consumer_info(nc, stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return info
        if time.monotonic() > deadline:
            pending = (info.num_pending, info.num_ack_pending) if info else None
            msg = (f"consumer {stream}/{durable} still has (num_pending, num_ack_pending) = "
                   f"{pending} after {timeout}s")
            raise AssertionError(msg)
        await asyncio.sleep(0.1)


# -- worker processes -------------------------------------------------------------------------


class WorkerProcess:
    """A ``_worker.py`` process serving ``JobService`` on ``urls``.

    It appends records to ``<directory>/<label>-<pid>.rec``, writes its live counters to
    ``<directory>/<label>.status`` and logs to ``<directory>/<label>.log``.
    """

    def __init__(self, urls: str | Sequence[str], directory: Path, label: str,
                 crash_on: Sequence[str] = (), **settings: Any) -> None:
        self.crash_on = list(crash_on)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.directory = directory
        self.label = label
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def status_path(self) -> Path:
        return self.directory / f"{self.label}.status"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.label}.log"

    def start(self) -> WorkerProcess:
        self.status_path.unlink(missing_ok=True)
        command = [sys.executable, str(HERE / "_worker.py"), "--record", str(self.directory),
                   "--label", self.label, "--settings", json.dumps(self.settings)]
        for url in self.urls:
            command += ["--url", url]
        for job_id in self.crash_on:
            command += ["--crash-on", job_id]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        return self

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    async def ready(self, timeout: float = 20.0) -> WorkerProcess:
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                msg = (f"worker {self.label} exited with {self.proc.returncode} before it was "
                       f"ready; log:\n{self.log_tail()}")
                raise AssertionError(msg)
            return bool(self.status().get("ready"))

        await wait_for(check, timeout, f"worker {self.label} to be ready")
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit code."""
        await wait_for(lambda: not self.running, timeout, f"worker {self.label} to exit",
                       poll=0.01)
        assert self.proc is not None
        return self.proc.returncode

    def cleanup(self) -> None:
        """Kill the process if it still runs (test teardown)."""
        self.kill()


# -- outcome -----------------------------------------------------------------------------------


@attrs.define
class Outcome:
    """What a scenario observed, printed and (with AMEBUS_RELIABILITY_REPORT) saved."""

    scenario: str
    messages: int
    faults: str
    lost: int
    duplicates: int
    stalled_seconds: list[float] = attrs.Factory(list)
    """Per fault: the longest stretch without a completed job after it (``Records.stalled``)."""
    recovered_seconds: list[float] = attrs.Factory(list)
    """Per fault: from the fault until the jobs it interrupted were completed."""
    seconds: float = 0.0
    extra: dict[str, Any] = attrs.Factory(dict)

    def report(self) -> None:
        data = attrs.asdict(self)
        data["mode"] = "full" if FULL else "short"
        for key in ("stalled_seconds", "recovered_seconds"):
            data[key] = [round(value, 3) for value in data[key]]
        data["seconds"] = round(self.seconds, 2)
        print(f"\n[reliability] {json.dumps(data)}")
        path = os.environ.get("AMEBUS_RELIABILITY_REPORT")
        if path:
            with open(path, "a") as file:
                file.write(json.dumps(data) + "\n")


def stalls(records: Records, faults: Sequence[float]) -> list[float]:
    """``Records.stalled`` for each fault, each up to the next fault."""
    ends: list[float | None] = [*faults[1:], None]
    return [records.stalled(at, end) for at, end in zip(faults, ends, strict=True)]


def tally(ids: Iterable[str], records: Records) -> tuple[int, int, list[str]]:
    """(lost, duplicates, up to 20 duplicated ids) of ``records`` against ``ids``."""
    wanted = set(ids)
    done = records.done()
    lost = len(wanted - done.keys())
    duplicated = sorted(i for i, lines in done.items() if len(lines) > 1)
    duplicates = sum(len(done[i]) - 1 for i in duplicated)
    if duplicated:
        print(f"[reliability] {duplicates} duplicate completions over {len(duplicated)} ids, "
              f"e.g. {duplicated[:20]}")
    return lost, duplicates, duplicated[:20]
