"""The one place that picks implementations for the ports from settings.

Embedded defaults need no credentials: pocketsphinx, eSpeak NG, the in-memory
store and feed. Vendor adapters are imported only when chosen, so a missing
optional dependency or credential fails at start-up with the setting's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from agent.archive import build_archive
from agent.call_control import TwilioCallControl
from agent.feed import Feed, MemoryFeed
from agent.flow import Flow
from agent.flow_loader import load_flow
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
        for part in (self.call_control, self.stt, self.tts, self.archive):
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


async def build_services(settings: Settings, base_url: str) -> Services:
    """Build inside the running loop (some clients open sessions at once)."""
    flow = load_flow(settings.flow_path)
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
    feed = MemoryFeed()
    archive = build_archive(settings, feed.publish)
    services = Services(
        settings=settings,
        base_url=base_url,
        flow=flow,
        tts=build_text_to_speech(settings),
        stt=build_speech_to_text(settings),
        call_control=call_control,
        store=MemoryStore(),
        feed=feed,
        archive=archive,
    )
    if archive is not None:
        await archive.start()
    return services
