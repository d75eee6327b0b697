"""Retention: delete archived days older than a limit.

The archive is laid out by UTC day (`{yyyy}/{mm}/{dd}/…`), so retention
works on whole days: with `--older-than 30d` a day folder goes once the day
is more than 30 days before today. `callstream archive prune` does it once;
`CALLSTREAM_ARCHIVE_RETENTION=30d` makes the archive worker do it at start
and then every `PRUNE_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, date, datetime, timedelta

from agent.ports import ArchiveStore

log = logging.getLogger("callstream.archive")

PRUNE_EVERY_S = 6 * 3600
_AGE = re.compile(r"^\s*(\d+)\s*([dw]?)\s*$")


def parse_age_days(text: str) -> int:
    """`30d`, `4w` or `30` (days) → days; ValueError otherwise."""
    match = _AGE.match(text.lower())
    if match is None or int(match[1]) < 1:
        raise ValueError(f"{text!r} is not an age like 30d or 4w")
    return int(match[1]) * (7 if match[2] == "w" else 1)


def days_to_prune(days: list[date], older_than_days: int, today: date) -> list[date]:
    cutoff = today - timedelta(days=older_than_days)
    return [d for d in days if d < cutoff]


def prune(store: ArchiveStore, older_than_days: int, today: date | None = None, *, dry_run: bool = False) -> list[tuple[date, int]]:
    """Delete the day folders older than the limit; [(day, objects removed)]. Blocking."""
    today = today or datetime.now(UTC).date()
    removed = []
    for day in days_to_prune(store.days(), older_than_days, today):
        count = 0 if dry_run else store.delete_day(day)
        removed.append((day, count))
        if not dry_run:
            log.info("archive retention: removed %s (%d objects)", day.isoformat(), count)
    return removed


async def prune_periodically(store: ArchiveStore, older_than_days: int, every_s: float = PRUNE_EVERY_S) -> None:
    """The retention schedule: runs until cancelled; a failed run is logged and tried next time."""
    while True:
        try:
            await asyncio.to_thread(prune, store, older_than_days)
        except Exception:
            log.exception("archive retention run failed: trying again in %.0f s", every_s)
        await asyncio.sleep(every_s)
