"""Archive storage in S3 (or any S3-compatible server), with boto3.

`CALLSTREAM_ARCHIVE=s3://bucket/prefix`; `CALLSTREAM_S3_ENDPOINT_URL` points
boto3 at another server (MinIO, a local moto server in tests); credentials
are AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the settings (so a `.env`
works) or else boto3's standard chain (environment, profile, instance role).

A single PutObject is atomic: S3 never shows part of an object ("Amazon S3
never adds partial objects"), so the archive's readers see whole files.
Retention lists a day's keys (ListObjectsV2, 1000 at a time) and removes
them with DeleteObjects (at most 1000 keys per request).
"""

from __future__ import annotations

import contextlib
import re
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_DAY = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/$")


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: tuple[str, str, str | None] | None = None,
    ) -> S3Store:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"CALLSTREAM_ARCHIVE={url!r}: an S3 archive is s3://bucket/prefix")
        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        keys: dict[str, Any] = {}
        if credentials is not None:  # from settings (.env); else boto3's own chain
            keys = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1], "aws_session_token": credentials[2]}
        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **keys)
        return cls(client, parts.netloc, parts.path)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type)

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def days(self) -> list[date]:
        found = []
        for year in self._folders(self.prefix):
            for month in self._folders(year):
                for day in self._folders(month):
                    match = _DAY.match(day[len(self.prefix) :])
                    if match:
                        with contextlib.suppress(ValueError):
                            found.append(date(*(int(g) for g in match.groups())))
        return sorted(found)

    def delete_day(self, day: date) -> int:
        prefix = f"{self.prefix}{day:%Y/%m/%d}/"
        count = 0
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                result = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                errors = result.get("Errors") or []
                if errors:
                    raise OSError(f"S3 refused to delete {len(errors)} object(s): {errors[0]}")
                count += len(keys)
        return count

    def _folders(self, prefix: str) -> list[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            found.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return found
