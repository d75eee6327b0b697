"""The one place that picks implementations for the ports from settings.

Embedded defaults need no credentials: pocketsphinx, eSpeak NG, the in-memory
store and feed. Vendor adapters are imported only when chosen, so a missing
optional dependency or credential fails at start-up with the setting's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from agent.call_control import TwilioCallControl
from agent.feed import Feed, MemoryFeed
from agent.flow import Flow
from agent.flow_loader import load_flow
from agent.ops import CallBook
from agent.ops_http import ArchiveFiles, LocalArchiveFiles
from agent.ports import ArchiveQueue, CallControl, CallStore, SpeechToText, TextToSpeech
from agent.session import CallSession, SessionDeps
from agent.settings import Settings
from agent.store import MemoryStore

log = logging.getLogger("callstream.wiring")


@dataclass
class Services:
    """Everything the app shares across calls."""

    settings: Settings
    base_url: str
    flow: Flow
    tts: TextToSpeech
    stt: SpeechToText | None
    call_control: CallControl | None
    store: CallStore
    feed: Feed
    archive: ArchiveQueue | None = None
    sessions: set[CallSession] = field(default_factory=set)
    calls: CallBook = field(default_factory=CallBook)  # the ops view, folded from the feed
    archive_files: ArchiveFiles | None = None  # what /ops/calls/{sid} links to

    def session_deps(self) -> SessionDeps:
        return SessionDeps(
            flow=self.flow,
            tts=self.tts,
            stt=self.stt,
            call_control=self.call_control,
            store=self.store,
            feed=self.feed,
            base_url=self.base_url,
            end_silence_ms=self.settings.end_silence_ms,
            vad_aggressiveness=self.settings.vad_aggressiveness,
            archive=self.archive,
        )

    async def aclose(self) -> None:
        for part in (self.call_control, self.stt, self.tts, self.feed, self.store):
            close = getattr(part, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    log.exception("closing %r", part)


def build_speech_to_text(settings: Settings) -> SpeechToText | None:
    if settings.stt == "none":
        return None
    if settings.stt == "sphinx":
        from agent.stt_sphinx import SphinxSpeechToText

        return SphinxSpeechToText()
    raise NotImplementedError(f"CALLSTREAM_STT={settings.stt} is not available in this build")


def build_text_to_speech(settings: Settings) -> TextToSpeech:
    from agent.tts_cache import CachedTextToSpeech

    if settings.tts == "espeak":
        from agent.tts_espeak import EspeakTextToSpeech

        return CachedTextToSpeech(EspeakTextToSpeech())
    raise NotImplementedError(f"CALLSTREAM_TTS={settings.tts} is not available in this build")


async def build_shared_state(settings: Settings) -> tuple[CallStore, Feed]:
    """The call store and live feed: in-process, or on Redis when REDIS_URL is
    set (shared by every instance). An unreachable Redis is a ConfigError
    naming REDIS_URL, within the connect timeout."""
    if not settings.redis_url:
        return MemoryStore(), MemoryFeed()
    from agent.feed_redis import RedisFeed
    from agent.redis_conn import connect, masked_url
    from agent.store_redis import RedisStore

    store = RedisStore(await connect(settings.redis_url), settings.redis_prefix)
    feed = RedisFeed(settings.redis_url, settings.redis_prefix)
    try:
        await feed.start()
    except BaseException:
        await store.aclose()
        raise
    log.info("call state and live feed on Redis %s (prefix %r)", masked_url(settings.redis_url), settings.redis_prefix)
    return store, feed


def build_archive_files(settings: Settings) -> ArchiveFiles | None:
    """The archive as /ops/calls/{sid} sees it: a local folder's files; for
    s3:// only the location an archive.stored event names."""
    if settings.archive.startswith("s3://"):
        return None
    return LocalArchiveFiles(settings.archive)


async def build_services(settings: Settings, base_url: str) -> Services:
    """Build inside the running loop (some clients open sessions at once)."""
    flow = load_flow(settings.flow_path)
    store, feed = await build_shared_state(settings)  # first: it may refuse (REDIS_URL)
    call_control: CallControl | None = None
    if settings.call_control_enabled:
        assert settings.twilio_account_sid and settings.twilio_auth_token
        call_control = TwilioCallControl(
            settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base
        )
    else:
        log.warning(
            "TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset: transfers, conferences, voicemail "
            "and hang-ups end the stream instead of updating the call"
        )
    return Services(
        settings=settings,
        base_url=base_url,
        flow=flow,
        tts=build_text_to_speech(settings),
        stt=build_speech_to_text(settings),
        call_control=call_control,
        store=store,
        feed=feed,
        archive_files=build_archive_files(settings),
    )
