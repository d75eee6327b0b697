"""Prometheus metrics (`GET /metrics`), with prometheus_client.

The per-frame path never touches a metric (prometheus_client takes a lock on
every update): sessions count frames in plain ints and `CallMetrics.flush`
adds the deltas about once a second and at call end.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_MS_BUCKETS = (10, 20, 40, 60, 80, 100, 120, 150, 200, 300, 500, 800, 1200, 2000, 5000)
FAST_MS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000)
# fine enough that `callstream bench calls` can read p50/p99 off the buckets
LAG_MS_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000)

CALLS_ACTIVE = Gauge("callstream_calls_active", "Media streams in progress", registry=REGISTRY)
CALLS_TOTAL = Counter("callstream_calls_total", "Media streams served, by end reason", ["reason"], registry=REGISTRY)
FRAMES_IN = Counter("callstream_frames_in_total", "Inbound media frames", registry=REGISTRY)
MESSAGES_OUT = Counter("callstream_messages_out_total", "Messages sent to Twilio", registry=REGISTRY)
MALFORMED = Counter(
    "callstream_malformed_messages_total", "Rejected or irregular Twilio messages, by kind", ["kind"], registry=REGISTRY
)
BARGEIN_MS = Histogram(
    "callstream_bargein_latency_ms", "Caller speech onset to clear sent (media ms)", buckets=LATENCY_MS_BUCKETS, registry=REGISTRY
)
RESPONSE_MS = Histogram(
    "callstream_response_latency_ms", "Caller turn final to first agent audio sent (wall ms)", buckets=FAST_MS_BUCKETS, registry=REGISTRY
)
STT_FINAL_MS = Histogram(
    "callstream_stt_final_latency_ms", "End of caller turn to final transcript (wall ms)", buckets=LATENCY_MS_BUCKETS, registry=REGISTRY
)
TTS_FIRST_AUDIO_MS = Histogram(
    "callstream_tts_first_audio_ms", "Prompt requested to first synthesized audio (wall ms)", buckets=FAST_MS_BUCKETS, registry=REGISTRY
)
WEBHOOK_MS = Histogram(
    "callstream_webhook_latency_ms", "Twilio webhook handling time (wall ms)", ["route"], buckets=FAST_MS_BUCKETS, registry=REGISTRY
)
ARCHIVE_QUEUE_DEPTH = Gauge("callstream_archive_queue_depth", "Calls waiting to be archived", registry=REGISTRY)
ARCHIVE_FAILURES = Counter("callstream_archive_failures_total", "Archive store attempts that failed", registry=REGISTRY)
FRAME_LATENESS_MS = Histogram(
    "callstream_frame_lateness_ms",
    "How late inbound media frames are handled, against the call's media timeline (wall ms, sampled)",
    buckets=LAG_MS_BUCKETS,
    registry=REGISTRY,
)
EVENT_LOOP_LAG_MS = Histogram(
    "callstream_event_loop_lag_ms", "Oversleep of a 100 ms event-loop timer (wall ms)", buckets=LAG_MS_BUCKETS, registry=REGISTRY
)
FEED_DROPPED = Counter("callstream_feed_dropped_total", "Live feed events dropped for slow subscribers", registry=REGISTRY)


class CallMetrics:
    """One call's counters, flushed to the registry in batches.

    Frame lateness: a frame of media timestamp `ts` is due at `anchor + ts`,
    where `anchor` is the earliest `handled_at - ts` seen on the call (the
    frame that came most on time). The session samples `handled_at - ts -
    anchor` on one frame in `LATENESS_SAMPLE_EVERY` into `lateness_s`; a
    server falling behind handles frames ever later, so lateness grows."""

    FLUSH_EVERY_FRAMES = 50
    LATENESS_SAMPLE_EVERY = 5

    def __init__(self) -> None:
        self.frames_in = 0
        self.messages_out = 0
        self.anchor_s = float("inf")
        self.lateness_s: list[float] = []
        self._flushed_in = 0
        self._flushed_out = 0
        self._malformed_flushed: dict[str, int] = {}

    def maybe_flush(self) -> None:
        if self.frames_in - self._flushed_in >= self.FLUSH_EVERY_FRAMES:
            self.flush()

    def flush(self, malformed: dict[str, int] | None = None) -> None:
        FRAMES_IN.inc(self.frames_in - self._flushed_in)
        MESSAGES_OUT.inc(self.messages_out - self._flushed_out)
        self._flushed_in, self._flushed_out = self.frames_in, self.messages_out
        if self.lateness_s:
            for late in self.lateness_s:
                FRAME_LATENESS_MS.observe(late * 1000)
            self.lateness_s.clear()
        for kind, count in (malformed or {}).items():
            delta = count - self._malformed_flushed.get(kind, 0)
            if delta:
                MALFORMED.labels(kind).inc(delta)
                self._malformed_flushed[kind] = count


async def watch_event_loop(interval_s: float = 0.1) -> None:
    """Observe how much later than asked a `sleep(interval_s)` wakes up: the
    time callbacks waited for the loop (callstream_event_loop_lag_ms)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG_MS.observe(max(0.0, loop.time() - started - interval_s) * 1000)
