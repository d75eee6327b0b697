"""The floor for `callstream bench calls --floor`: the least a Python media
socket does per frame, to measure callstream against on the same machine.

DESIGN.md "Performance": "a bare Starlette/uvicorn socket doing only json +
base64 + webrtcvad ≈ 0.3 % (~300 calls)". This is that socket (served by
uvicorn's websockets-sansio, as `callstream serve` was before the media
lane), plus the same frame-lateness sampling and frame counter callstream
has, so the bench reads both the same way. It sends nothing back: no agent,
no dialog, no recording. Run it with `python -m agent.bench.calls_floor PORT`.
"""

from __future__ import annotations

import sys
import time
from binascii import a2b_base64

import orjson
import uvicorn
import webrtcvad
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from agent.metrics import LAG_MS_BUCKETS
from media import mulaw

REGISTRY = CollectorRegistry()
FRAMES_IN = Counter("callstream_frames_in_total", "Inbound media frames", registry=REGISTRY)
LATENESS_MS = Histogram("callstream_frame_lateness_ms", "as agent/metrics.py", buckets=LAG_MS_BUCKETS, registry=REGISTRY)


async def media(websocket: WebSocket) -> None:
    await websocket.accept()
    vad = webrtcvad.Vad(2)
    anchor = float("inf")
    frames = 0
    samples: list[float] = []
    while True:
        message = await websocket.receive()
        text = message.get("text")
        if text is None:
            break
        obj = orjson.loads(text)
        if obj.get("event") != "media":
            continue
        payload = a2b_base64(obj["media"]["payload"])
        vad.is_speech(mulaw.decode(payload), 8000)
        handled = time.monotonic() - int(obj["media"]["timestamp"]) / 1000
        anchor = min(anchor, handled)
        frames += 1
        if frames % 5 == 0:
            samples.append(handled - anchor)
        if frames % 50 == 0:
            FRAMES_IN.inc(50)
            for late in samples:
                LATENESS_MS.observe(late * 1000)
            samples.clear()


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def readyz(request: Request) -> Response:
    return JSONResponse({"ready": True})


app = Starlette(routes=[WebSocketRoute("/twilio/media", media), Route("/metrics", metrics), Route("/readyz", readyz)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ws="websockets-sansio", log_level="warning",
                access_log=False, lifespan="off")
