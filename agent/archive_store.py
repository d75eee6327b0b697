"""Archive storage: the `ArchiveStore` port (agent/ports.py) over a local folder,
and the choice between it and S3 from `CALLSTREAM_ARCHIVE`.

`FolderStore` writes each object atomically: into a temporary file beside
it, fsync, `os.replace` onto the final name (atomic on POSIX), then fsync the
folder so the new name survives a power cut. A reader — or a crash — sees
the old object, the whole new one, or nothing; never half a WAV.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from datetime import date
from pathlib import Path

from agent.durable_files import write_durably
from agent.ports import ArchiveStore

_DIGITS = re.compile(r"^\d+$")


class FolderStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad archive key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp"), path, data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def location(self, key: str) -> str:
        return str(self._path(key)) if key else str(self.root)

    def days(self) -> list[date]:
        found = []
        for year in _numbered(self.root, 4):
            for month in _numbered(year, 2):
                for day in _numbered(month, 2):
                    with contextlib.suppress(ValueError):
                        found.append(date(int(year.name), int(month.name), int(day.name)))
        return sorted(found)

    def delete_day(self, day: date) -> int:
        folder = self.root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        for parent in (folder.parent, folder.parent.parent):  # empty month, then year
            with contextlib.suppress(OSError):
                parent.rmdir()
        return count


def _numbered(folder: Path, width: int) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and len(p.name) == width and _DIGITS.match(p.name))




def is_s3(target: str) -> bool:
    return target.startswith("s3://")


def build_archive_store(
    target: str,
    *,
    s3_endpoint_url: str | None = None,
    region: str | None = None,
    credentials: tuple[str, str, str | None] | None = None,
) -> ArchiveStore:
    """`CALLSTREAM_ARCHIVE`: a folder path, or `s3://bucket/prefix`."""
    if is_s3(target):
        from agent.archive_s3 import S3Store

        return S3Store.from_url(target, endpoint_url=s3_endpoint_url, region=region, credentials=credentials)
    return FolderStore(target)
