"""A worker process for the reliability scenarios: serves ``JobService`` until SIGTERM.

``python _worker.py --url URL [--url URL ...] --record DIR --label NAME --settings JSON``

Records go to ``DIR/<label>-<pid>.rec``; live counters to ``DIR/<label>.status`` (JSON,
rewritten every 100 ms: ready, in_flight, buffered, received, handled). On SIGTERM the serve
task is cancelled (amebus then naks what it had pulled and gives running handlers
``shutdown_timeout``), the status records ``stopped_in`` seconds, and the process exits 0.
The client reconnects forever, 100 ms apart, as the Service docs ask.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scenario import JobService, Recorder, close, connect


def _write_status(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> int:
    settings = json.loads(args.settings)
    directory = Path(args.record)
    status_path = directory / f"{args.label}.status"
    recorder = Recorder(directory / f"{args.label}-{os.getpid()}.rec", args.label)
    JobService.recorder = recorder
    JobService.crash_on = frozenset(args.crash_on)
    service = JobService()
    nc = await connect(args.url, name=f"amebus-worker-{args.label}")
    ready = asyncio.Event()
    serving = asyncio.create_task(service.serve(nc.jetstream(), ready=ready, **settings))
    stopping_at: list[float] = []

    def on_sigterm() -> None:
        if not stopping_at:
            stopping_at.append(time.monotonic())
            serving.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)

    def status(**extra: object) -> dict[str, object]:
        stats = service.stats
        return {"ready": ready.is_set(), "pid": os.getpid(), "in_flight": stats.in_flight,
                "buffered": stats.buffered, "received": stats.received,
                "handled": stats.total().handled, **extra}

    async def report() -> None:
        while True:
            _write_status(status_path, status())
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(report())
    code = 0
    try:
        await serving
    except asyncio.CancelledError:
        pass
    except Exception:
        logging.exception("serve() failed")
        code = 1
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    stopped_in = time.monotonic() - stopping_at[0] if stopping_at else None
    _write_status(status_path, status(stopped_in=stopped_in, exit=code))
    print(f"worker {args.label}: stopped in {stopped_in}s", flush=True)
    await close(nc)
    recorder.close()
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--crash-on", action="append", default=[],
                        help="a job id whose handler kills the process")
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parser.parse_args())))
