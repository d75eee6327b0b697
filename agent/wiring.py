"""The one place that picks implementations for the ports from settings.

Embedded defaults need no credentials: pocketsphinx, eSpeak NG, the in-memory
store and feed. Vendor adapters are imported only when chosen, so a missing
optional dependency or credential fails at start-up with the setting's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.archive import archive_enabled, build_archive
from agent.archive_store import is_s3
from agent.call_control import TwilioCallControl
from agent.feed import Feed, MemoryFeed
from agent.flow import Flow
from agent.flow_loader import load_flow
from agent.ops import CallBook
from agent.ops_http import ArchiveFiles, LocalArchiveFiles
from agent.ports import ArchiveQueue, CallControl, CallStore, SpeechToText, TextToSpeech
from agent.session import CallSession, SessionDeps
from agent.settings import ConfigError, Settings
from agent.store import MemoryStore

if TYPE_CHECKING:
    from agent.tts_polly import PollyTextToSpeech

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
    stt_fallback: SpeechToText | None = None
    tts_fallback: TextToSpeech | None = None
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
            stt_fallback=self.stt_fallback,
            tts_fallback=self.tts_fallback,
            speech=self.settings.speech,
            max_messages_per_s=self.settings.max_messages_per_s,
            start_timeout_s=self.settings.start_timeout_s,
        )

    async def aclose(self) -> None:
        for part in (
            self.call_control, self.stt, self.tts, self.stt_fallback, self.tts_fallback,
            self.archive, self.feed, self.store,  # the archive drains into the feed: close it first
        ):
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
        from agent.stt_sphinx import SphinxSpeechToText, default_workers

        return SphinxSpeechToText(workers=settings.sphinx_workers or default_workers())
    if settings.stt == "deepgram":
        from agent.stt_deepgram import DeepgramOptions, DeepgramSpeechToText

        assert settings.deepgram_api_key  # check_settings
        return DeepgramSpeechToText(
            settings.deepgram_api_key,
            url=settings.deepgram_url,
            options=DeepgramOptions(model=settings.deepgram_model),
        )
    raise NotImplementedError(f"CALLSTREAM_STT={settings.stt} is not available in this build")


def build_text_to_speech(settings: Settings) -> TextToSpeech:
    from agent.tts_cache import CachedTextToSpeech

    if settings.tts == "espeak":
        from agent.tts_espeak import EspeakTextToSpeech

        return CachedTextToSpeech(EspeakTextToSpeech())
    if settings.tts == "polly":
        return CachedTextToSpeech(_polly(settings))
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
    if not archive_enabled(settings) or is_s3(settings.archive):
        return None
    return LocalArchiveFiles(settings.archive)


def _polly(settings: Settings) -> PollyTextToSpeech:
    from agent.tts_polly import PollyTextToSpeech

    assert settings.aws_region  # check_settings
    credentials = None
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        credentials = (settings.aws_access_key_id, settings.aws_secret_access_key, settings.aws_session_token)
    return PollyTextToSpeech(settings.aws_region, endpoint_url=settings.polly_endpoint_url, credentials=credentials)


def build_fallbacks(settings: Settings) -> tuple[SpeechToText | None, TextToSpeech | None]:
    """The offline providers that stand in when a cloud one fails mid-call:
    sphinx for a Deepgram stream that fails for good, eSpeak for a prompt Polly
    could not synthesize."""
    stt: SpeechToText | None = None
    tts: TextToSpeech | None = None
    if settings.stt == "deepgram":
        from agent.stt_sphinx import SphinxSpeechToText, default_workers

        stt = SphinxSpeechToText(workers=settings.sphinx_workers or default_workers())
    if settings.tts == "polly":
        from agent.tts_cache import CachedTextToSpeech
        from agent.tts_espeak import EspeakTextToSpeech

        tts = CachedTextToSpeech(EspeakTextToSpeech(), max_bytes=2 * 1024 * 1024)
    return stt, tts


async def check_credentials(settings: Settings) -> None:
    """Ask the chosen cloud providers once, at start-up, whether they take our
    credentials: a refusal is a ConfigError naming the setting. A provider that
    cannot be reached is only a warning (calls retry, then fall back)."""
    if settings.stt == "deepgram":
        from agent.stt_deepgram import DeepgramAuthError, DeepgramRequestError, DeepgramSpeechToText

        stt = build_speech_to_text(settings)
        assert isinstance(stt, DeepgramSpeechToText)
        try:
            await stt.check()
        except DeepgramAuthError as exc:
            raise ConfigError(f"DEEPGRAM_API_KEY: {exc}; set a valid key (console.deepgram.com)") from None
        except DeepgramRequestError as exc:
            raise ConfigError(f"DEEPGRAM_MODEL={settings.deepgram_model!r}: {exc}") from None
        except Exception as exc:
            log.warning("Deepgram at %s did not answer at start-up (%s): calls will retry, then use sphinx",
                        settings.deepgram_url or "api.deepgram.com", type(exc).__name__)
    if settings.tts == "polly" and not _polly(settings).has_credentials:
        raise ConfigError(
            "CALLSTREAM_TTS=polly found no AWS credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role"
        )


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
    stt_fallback, tts_fallback = build_fallbacks(settings)
    archive = build_archive(settings, feed.publish)
    services = Services(
        settings=settings,
        base_url=base_url,
        flow=flow,
        tts=build_text_to_speech(settings),
        stt=build_speech_to_text(settings),
        call_control=call_control,
        store=store,
        feed=feed,
        archive=archive,
        archive_files=build_archive_files(settings),
        stt_fallback=stt_fallback,
        tts_fallback=tts_fallback,
    )
    if archive is not None:
        await archive.start()
    return services
