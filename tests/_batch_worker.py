"""A process serving one batch route, for the kill -9 test of ``test_batch_routes.py``.

``python _batch_worker.py URL STREAM DURABLE PREFIX RECORD HANG_AT``

Each batch appends ``begin <ids>`` to RECORD before its handler works and ``done <ids>`` after;
batch number HANG_AT (1-based) hangs after its ``begin`` line, so the test can kill the process
while a batch is running.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import attrs
import nats

import amebus
from amebus import Batch, Route, Service


@attrs.frozen
class Job(amebus.Event):
    subject_pattern = "*.job.*"
    ns: str
    job_id: int

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "job", str(self.job_id))


def _line(path: Path, text: str) -> None:
    with path.open("a") as out:
        out.write(text + "\n")
        out.flush()


async def main(url: str, stream: str, durable: str, prefix: str, record: str,
               hang_at: int) -> None:
    path = Path(record)
    calls = 0

    class Worker(Service):
        @Route(Job, batch=Batch(size=10, wait=0.2))
        async def jobs(self, jobs: list[Job]) -> None:
            nonlocal calls
            calls += 1
            ids = " ".join(str(job.job_id) for job in jobs)
            _line(path, f"begin {ids}")
            if calls == hang_at:
                await asyncio.Event().wait()  # killed here
            await asyncio.sleep(0.05)
            _line(path, f"done {ids}")

    nc = await nats.connect(url)
    await Worker().serve(nc.jetstream(), stream=stream, durable=durable,
                         stream_subjects=(f"{prefix}.>",), ack_wait=2.0, max_deliver=5,
                         backoff=(0.1,), shutdown_timeout=1.0)


if __name__ == "__main__":
    url, stream, durable, prefix, record, hang_at = sys.argv[1:7]
    asyncio.run(main(url, stream, durable, prefix, record, int(hang_at)))
