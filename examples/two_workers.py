"""One durable consumer served by two processes: JetStream splits the messages between them.

Run it: ``python examples/two_workers.py``. It starts an embedded nats-server, spawns two
worker processes (this file with ``--worker``) serving the same durable, publishes 40 jobs and
shows which worker ran which. Each message goes to exactly one of them; if one dies, its
unacknowledged messages are redelivered to the other after ``ack_wait``.
The same with the command line: run ``amebus run examples/two_workers.py:Jobs`` twice.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
from nats.aio.msg import Msg

from amebus import Route, Service
from amebus.testing import NatsServer

JOBS = 40


class Jobs(Service):
    stream = "JOBS"
    stream_subjects = ("jobs.>",)
    durable = "jobs"  # the name is what makes the processes share one consumer

    @Route("jobs.*")
    async def run_job(self, payload: bytes, msg: Msg) -> None:
        await asyncio.sleep(0.01)  # some work, so both workers get a share
        print(f"did {msg.subject}", flush=True)


async def worker(url: str) -> None:
    """Serve Jobs until SIGTERM, then finish the running job and exit."""
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    ready = asyncio.Event()
    # The server hands messages to the workers' pull requests in turn. batch=4 also shares a
    # backlog that waited in the stream before the second worker started (with the default,
    # 256, the first worker would take it all at once).
    serving = asyncio.create_task(Jobs().serve(nc.jetstream(), ready=ready, batch=4))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, serving.cancel)
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(serving, return_exceptions=True)
    await nc.close()


async def main() -> None:
    async with NatsServer() as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1)
        js = nc.jetstream()
        await js.add_stream(name="JOBS", subjects=["jobs.>"])
        workers = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", server.url, stdout=asyncio.subprocess.PIPE)
            for _ in range(2)]
        for proc in workers:
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"ready\n"
        for n in range(JOBS):
            await js.publish(f"jobs.{n}", b"")

        done: dict[int, list[str]] = {0: [], 1: []}

        async def collect(index: int, proc: asyncio.subprocess.Process) -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                done[index].append(line.decode().split()[-1])

        readers = [asyncio.create_task(collect(i, p)) for i, p in enumerate(workers)]
        async with asyncio.timeout(15):
            while len(done[0]) + len(done[1]) < JOBS:
                await asyncio.sleep(0.05)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        codes = [await proc.wait() for proc in workers]
        await asyncio.gather(*readers)
        await nc.close()

    every = done[0] + done[1]
    for index, subjects in done.items():
        print(f"worker {index + 1} (exit {codes[index]}) ran {len(subjects)} jobs: "
              f"{', '.join(s.split('.')[1] for s in subjects[:8])}, ...")
    print(f"{len(set(every))} of {JOBS} jobs ran, {len(every) - len(set(every))} twice")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker(sys.argv[2]))
    else:
        asyncio.run(main())
