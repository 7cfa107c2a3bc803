"""Fixtures of the reliability scenarios; every test here carries the ``reliability`` marker.

Short scale by default (part of the normal test run); ``AMEBUS_RELIABILITY=full`` for the
full one: ``AMEBUS_RELIABILITY=full python -m pytest -m reliability tests/reliability``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scenario import WorkerProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    """Where the scenario's record files, worker status files and worker logs go."""
    directory = tmp_path / "records"
    directory.mkdir()
    return directory


@pytest.fixture
def workers(record_dir: Path, request: pytest.FixtureRequest
            ) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers(urls, label, **settings)`` starts a worker process; all are killed at teardown.

    A failed test gets the tail of each worker's log in its report.
    """
    started: list[WorkerProcess] = []

    def start(urls: Any, label: str, **settings: Any) -> WorkerProcess:
        worker = WorkerProcess(urls, record_dir, label, **settings).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.cleanup()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for worker in started:
            print(f"--- worker {worker.label} log tail ---\n{worker.log_tail()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
