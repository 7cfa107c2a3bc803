"""``amebus run --workers N`` on a real embedded server: a worker killed with SIGKILL under
load is restarted and nothing is lost (the reliability scenarios' ledger); one SIGTERM stops
every worker, the supervisor exits 0 and leaves no process and no temporary directory."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.reliability._scenario import (
    Outcome,
    close,
    connect,
    job_ids,
    publish_jobs,
    settled_consumer,
    tally,
    wait_until_done,
)
from tests.test_cli_embedded import eventually, gone

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests.cli_services:Worked"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="workers get PR_SET_PDEATHSIG (Linux's prctl)")


class Supervised:
    """``amebus run --workers N`` with its stderr read by a thread into ``lines``."""

    def __init__(self, records: Path, workers: int, target: str = TARGET,
                 serving: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        env.update(AMEBUS_CLI_TEST_RECORDS=str(records), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amebus", "run", target, "--workers", str(workers),
             "--status-interval", "0"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.url, store = self.wait_for(r"embedded nats-server at (\S+), store (\S+),").groups()
        self.tmp_dir = Path(store).parent
        if serving:
            self.wait_for(r"serving", count=workers)
        self.server = next(p for p in psutil.Process(self.proc.pid).children()
                           if p.name() == "nats-server")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # EOF
            self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> re.Match[str]:
        """The ``count``-th line matching ``pattern`` (fails at EOF or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for line in self.lines if (m := re.search(pattern, line))]
                if len(found) >= count:
                    return found[count - 1]
                if self.lines[-1:] == [""] or not self._changed.wait(deadline - time.monotonic()):
                    pytest.fail(f"no {count}x {pattern!r}:\n{''.join(self.lines)}")

    def worker_pids(self, index: int) -> list[int]:
        """Every pid worker ``index`` had so far, in order."""
        return [int(m[1]) for line in list(self.lines)
                if (m := re.search(rf"worker {index} started \(pid (\d+)\)", line))]

    def family(self) -> list[psutil.Process]:
        return [self.proc_ps, *self.proc_ps.children(recursive=True)]

    @property
    def proc_ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    yield started
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()  # the workers (death signal) and the server follow
        running.proc.wait(10)


def test_a_killed_worker_is_restarted_and_nothing_is_lost(
        tmp_path: Path, supervised: list[Supervised]) -> None:
    records = tmp_path / "records"
    records.mkdir()
    running = Supervised(records, workers=2)
    supervised.append(running)
    ids = job_ids(800)
    began = time.monotonic()

    async def scenario() -> Outcome:
        nc = await connect(running.url)
        try:
            publishing = asyncio.create_task(publish_jobs(nc, ids[:500], sleep=0.02, chunk=50))
            await wait_until_done(records, ids[:100], 30)  # under load, both workers busy
            victim = running.worker_pids(1)[-1]
            os.kill(victim, signal.SIGKILL)
            await asyncio.to_thread(running.wait_for, r"serving", 3)  # its successor serves
            await publishing
            await publish_jobs(nc, ids[500:], sleep=0.02, chunk=50)  # work for both again
            done = await wait_until_done(records, ids, 60)
            await settled_consumer(nc, "REL", "rel")
        finally:
            await close(nc)
        lost, duplicates, _ = tally(ids, done)
        handled_by = done.by_label()
        victim_started = {line.id for line in done.lines
                          if line.kind == "start" and line.label == str(victim)}
        victim_done = {line.id for line in done.lines
                       if line.kind == "done" and line.label == str(victim)}
        assert str(victim) in handled_by  # the killed worker had handled some
        assert str(running.worker_pids(1)[-1]) in handled_by  # and its successor too
        return Outcome("cli-workers-kill", len(ids), "SIGKILL of worker 1 of 2", lost,
                       duplicates, seconds=time.monotonic() - began,
                       extra={"handled_by_pid": handled_by,
                              "in_flight_at_the_kill": len(victim_started - victim_done)})

    outcome = asyncio.run(scenario())
    outcome.report()
    assert outcome.lost == 0
    assert "exited unexpectedly: killed by SIGKILL; restarting it" in "".join(running.lines)


def test_one_sigterm_stops_every_worker_and_the_server(
        tmp_path: Path, supervised: list[Supervised]) -> None:
    running = Supervised(tmp_path, workers=2)
    supervised.append(running)
    family = running.family()
    workers = [p for p in family if p.pid in running.worker_pids(1) + running.worker_pids(2)]
    assert len(workers) == 2
    assert running.tmp_dir.is_dir()
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(30) == 0
    text = "".join(running.lines)
    for index in (1, 2):  # each worker got one SIGTERM (not two: no "again")
        assert f"[worker {index}] amebus: SIGTERM: stopping" in text
        assert f"[worker {index}] amebus: stopped: handled" in text
    assert "SIGTERM again" not in text
    assert "stopped: 2 workers exited cleanly" in text
    for process in family:
        eventually(lambda p=process: gone(p), f"{process} is gone")
    assert not running.tmp_dir.exists()


def test_a_crash_loop_is_bounded_and_reported(tmp_path: Path,
                                              supervised: list[Supervised]) -> None:
    running = Supervised(tmp_path, 1, "tests.cli_services:CrashesAtStart", serving=False)
    supervised.append(running)
    family = running.family()
    assert running.proc.wait(60) == 1
    text = "".join(running.lines)
    assert "worker 1 exited 5 times within 60s (last: exit code 3): a crash loop" in text
    assert "restarting it in 0.5s" in text and "restarting it in 4s" in text  # the backoff
    assert len(running.worker_pids(1)) == 5
    for process in family:
        eventually(lambda p=process: gone(p), f"{process} is gone")
    assert not running.tmp_dir.exists()


def test_sigkill_of_the_supervisor_leaves_no_worker_and_no_server(
        tmp_path: Path, supervised: list[Supervised]) -> None:
    running = Supervised(tmp_path, workers=2)
    supervised.append(running)
    family = running.family()
    running.proc.kill()
    running.proc.wait(10)
    for process in family:  # workers get SIGTERM (death signal), the server SIGKILL
        eventually(lambda p=process: gone(p), f"{process} is gone", timeout=20)
    eventually(lambda: not running.tmp_dir.exists(), f"{running.tmp_dir} is removed")
