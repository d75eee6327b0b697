"""`callstream worker` and `callstream archive …`: the archive's command line.

- `callstream worker [--concurrency N] [--drain]` — with REDIS_URL, consumers
  of the Redis archive stream (as many processes and hosts as you like);
  without it, the drainer of this machine's spool (when no server is running
  on it: the spool has one drainer at a time, by lock).
- `callstream archive prune --older-than 30d [--dry-run]` — retention.
- `callstream archive requeue` — dead-lettered jobs back into the queue.
- `callstream archive status` — queue depth and dead letters.

Test-only: `CALLSTREAM_ARCHIVE_TEST_HOOK=block-before-store` parks the worker
between taking a job and storing it (see ArchiveProcessor._before_store).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.archive import archive_enabled, build_processor, build_store, spool_path
from agent.archive_prune import parse_age_days, prune, prune_periodically
from agent.archive_spool import Spool
from agent.archive_worker import SpoolDrainer
from agent.settings import Settings, load_settings

TEST_HOOK_ENV = "CALLSTREAM_ARCHIVE_TEST_HOOK"


def add_archive_commands(sub: Any) -> None:
    worker = sub.add_parser("worker", help="run archive workers (Redis stream, or this machine's spool)")
    worker.add_argument("--concurrency", type=int, default=1, help="consumers in this process (Redis; default 1)")
    worker.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    worker.add_argument("--name", default=f"{socket.gethostname()}:{os.getpid()}", help="consumer name (Redis)")
    worker.add_argument("--claim-idle", type=float, default=60.0, help="seconds before a silent worker's job is taken over")
    worker.add_argument("--metrics-port", type=int, default=0, help="serve /metrics (Prometheus) on this port")
    worker.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    worker.set_defaults(func=cmd_worker)

    archive = sub.add_parser("archive", help="archive maintenance")
    archive_sub = archive.add_subparsers(dest="archive_command", required=True)
    prune_cmd = archive_sub.add_parser("prune", help="delete archived days older than an age")
    prune_cmd.add_argument("--older-than", required=True, help="an age like 30d or 4w")
    prune_cmd.add_argument("--dry-run", action="store_true", help="only list what would go")
    prune_cmd.set_defaults(func=cmd_prune)
    requeue = archive_sub.add_parser("requeue", help="put dead-lettered jobs back in the queue")
    requeue.set_defaults(func=cmd_requeue)
    status = archive_sub.add_parser("status", help="queue depth and dead letters")
    status.set_defaults(func=cmd_status)


def _archive_settings() -> Settings | None:
    settings = load_settings()
    if not archive_enabled(settings):
        print("the archive is off (CALLSTREAM_ARCHIVE=off): nothing to do", file=sys.stderr)
        return None
    return settings


def cmd_worker(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging

    settings = _archive_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level, json_lines=args.json_logs)
    if args.metrics_port:
        from prometheus_client import start_http_server

        from agent.metrics import REGISTRY

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=REGISTRY)
    return asyncio.run(run_worker(settings, args, test_hook=os.environ.get(TEST_HOOK_ENV) or None))


async def run_worker(settings: Settings, args: argparse.Namespace, *, test_hook: str | None = None) -> int:
    store = build_store(settings)
    processor = build_processor(settings, store, test_hook=test_hook)
    stops: list[Callable[[], None]] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [stop() for stop in stops])
    if processor.recordings is None:
        print("TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset: Twilio recordings cannot be fetched", file=sys.stderr)
    background = []
    if settings.archive_retention_days:
        background.append(asyncio.create_task(prune_periodically(store, settings.archive_retention_days)))
    try:
        if settings.redis_url:
            return await _run_redis(settings, args, processor, stops)
        return await _run_spool(settings, args, processor, stops)
    finally:
        for task in background:
            task.cancel()


async def _run_redis(settings: Settings, args: argparse.Namespace, processor: Any, stops: list[Callable[[], None]]) -> int:
    from agent.archive_redis import RedisArchiveWorker
    from agent.feed_redis import RedisFeed

    assert settings.redis_url
    # archive.stored goes onto the shared live feed, as the embedded worker's does
    feed = RedisFeed(settings.redis_url, settings.redis_prefix)
    await feed.start()
    workers = [
        RedisArchiveWorker(
            settings.redis_url,
            processor,
            consumer=f"{args.name}-{i}",
            claim_idle_s=args.claim_idle,
            max_attempts=settings.archive_max_attempts,
            publish=feed.publish,
        )
        for i in range(max(1, args.concurrency))
    ]
    stops.extend(w.stop for w in workers)
    print(
        f"archive worker {args.name}: {len(workers)} consumer(s) of the Redis stream → {processor.store.location('')}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await asyncio.gather(*(w.run(drain=args.drain) for w in workers))
    finally:
        for w in workers:
            await w.aclose()
        await feed.aclose()
    print(f"archive worker {args.name}: {sum(w.stored for w in workers)} job(s) stored", file=sys.stderr)
    return 0


async def _run_spool(settings: Settings, args: argparse.Namespace, processor: Any, stops: list[Callable[[], None]]) -> int:
    spool = Spool(spool_path(settings))
    drainer = SpoolDrainer(spool, processor.process, max_attempts=settings.archive_max_attempts)
    stops.append(drainer.stop)
    print(f"archive worker: draining the spool {spool.root} → {processor.store.location('')}", file=sys.stderr, flush=True)
    task = asyncio.create_task(drainer.run())
    if args.drain:
        while not task.done() and not await drainer.wait_idle(5.0):
            pass
        drainer.stop()
    await task
    print(f"archive worker: {drainer.stored} job(s) stored", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _archive_settings()
    if settings is None:
        return 2
    try:
        days = parse_age_days(args.older_than)
    except ValueError as exc:
        print(f"--older-than: {exc}", file=sys.stderr)
        return 2
    store = build_store(settings)
    removed = prune(store, days, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for day, count in removed:
        print(f"{verb} {store.location(f'{day:%Y/%m/%d}')}" + ("" if args.dry_run else f" ({count} objects)"))
    print(f"{len(removed)} day(s) older than {days} days {verb} from {store.location('')}")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    settings = _archive_settings()
    if settings is None:
        return 2
    if settings.redis_url:
        from agent.archive_redis import requeue_dead

        count = requeue_dead(settings.redis_url)
    else:
        count = Spool(spool_path(settings)).requeue_dead(int(time.time() * 1000))
    print(f"{count} dead-lettered job(s) queued again")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = _archive_settings()
    if settings is None:
        return 2
    spool = Spool(spool_path(settings))
    print(f"archive: {settings.archive}")
    print(f"spool {spool.root}: {spool.depth()} queued, {spool.dead_count()} dead")
    if settings.redis_url:
        import redis

        from agent.archive_redis import stream_names

        client = redis.Redis.from_url(settings.redis_url)
        jobs, dead = stream_names()
        try:
            print(f"redis {jobs}: {client.xlen(jobs)} queued; {dead}: {client.xlen(dead)} dead")
        finally:
            client.close()
    return 0


def archived_calls(root: Path, call_sids: list[str]) -> list[str]:
    """The calls among `call_sids` whose call.json is in the folder archive `root`."""
    return [sid for sid in call_sids if any(root.glob(f"*/*/*/{sid}/call.json"))]
