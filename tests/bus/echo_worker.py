"""A scripted worker process that speaks the real bus protocol, for tests.

    python -m tests.bus.echo_worker URL ROLE NAME [--hang] [--delay SECONDS] [--ack-wait S]

It answers every CodeRequest with a CodeResult whose summary is NAME. With --hang it prints
`RECEIVED <task_id>` and then never answers, so a test can SIGKILL it mid-task.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from codeyard.bus import Bus, PullWorker, Topology
from codeyard.schemas import CodeRequest, CodeResult, Patch, Result, WorkItem


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("role")
    parser.add_argument("name")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    args = parser.parse_args()

    async def handle(item: WorkItem) -> Result:
        assert isinstance(item, CodeRequest)
        print(f"RECEIVED {item.task_id}", flush=True)
        if args.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(args.delay)
        return CodeResult(patch=Patch(text=f"edit for {item.task_id}"), summary=args.name)

    bus = await Bus.connect(args.url, name=args.name, topology=Topology(ack_wait=args.ack_wait))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await PullWorker(bus, args.role, handle).run(stop)
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main())
