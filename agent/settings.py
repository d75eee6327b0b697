"""Settings from the environment (and a `.env` file), checked once at start-up.

The names are a contract (DESIGN.md "Settings"). A bad or missing value is a
`ConfigError` that names the key and the fix, raised before the server binds,
never on the first call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from twiml.numbers import is_e164, is_sip_uri

DEFAULT_FLOW = Path(__file__).resolve().parent.parent / "fixtures" / "flows" / "acme.yaml"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class Settings:
    public_base_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_base: str = "https://api.twilio.com"
    twilio_from_number: str | None = None  # caller ID for `callstream call` (E.164 or sip:)
    speech: str = "stream"  # stream (audio over the Media Stream) | twiml (Twilio renders <Say>)
    flow_path: str = str(DEFAULT_FLOW)
    stt: str = "sphinx"  # sphinx | deepgram | none
    tts: str = "espeak"  # espeak | polly
    deepgram_api_key: str | None = None
    deepgram_url: str | None = None
    deepgram_model: str = "nova-3"
    aws_region: str | None = None
    polly_endpoint_url: str | None = None
    # explicit AWS keys (from the environment or .env); unset: boto3's own chain
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "callstream:"  # CALLSTREAM_REDIS_PREFIX: keys and the feed channel
    archive: str = "./archive"
    ops_token: str | None = None
    log_level: str = "INFO"
    # tuning (not in the contract; documented in the README)
    end_silence_ms: int = 700
    vad_aggressiveness: int = 2
    # bad peers on the media socket (agent/rate_limit.py, docs/faults.md)
    max_messages_per_s: int = 500  # 0: no limit
    start_timeout_s: float = 10.0
    # the archive (agent/archive.py; README "The archive")
    archive_spool: str | None = None  # default: <archive>/.spool, or ./archive-spool with S3
    s3_endpoint_url: str | None = None
    archive_retention_days: int | None = None
    delete_twilio_recordings: bool = False
    archive_max_attempts: int = 20
    drain_s: int = 25  # CALLSTREAM_DRAIN_S: SIGTERM lets calls finish this long (agent/shutdown.py)
    sphinx_workers: int = 0  # CALLSTREAM_SPHINX_WORKERS: decoder processes; 0: min(2, cores)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def validate_signatures(self) -> bool:
        """DESIGN.md: when TWILIO_AUTH_TOKEN is set every webhook and the
        WebSocket upgrade must carry a valid X-Twilio-Signature."""
        return bool(self.twilio_auth_token)

    @property
    def call_control_enabled(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    def base_url_for(self, host: str, port: int) -> str:
        """PUBLIC_BASE_URL, or the local address when it is unset (development)."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{host}:{port}"

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{key}={raw!r}: use 1 or 0")


def _age_days(env: Mapping[str, str], key: str) -> int | None:
    from agent.archive_prune import parse_age_days

    raw = env.get(key)
    if not raw:
        return None
    try:
        return parse_age_days(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: give an age like 30d (days) or 4w (weeks)") from None


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    """Read settings: the process environment wins over the `.env` file."""
    env: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    def get(key: str) -> str | None:
        value = env.get(key)
        return value if value else None

    settings = Settings(
        public_base_url=get("PUBLIC_BASE_URL"),
        twilio_account_sid=get("TWILIO_ACCOUNT_SID"),
        twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
        twilio_api_base=get("TWILIO_API_BASE") or "https://api.twilio.com",
        twilio_from_number=get("TWILIO_FROM_NUMBER"),
        speech=(get("CALLSTREAM_SPEECH") or "stream").lower(),
        flow_path=get("CALLSTREAM_FLOW") or str(DEFAULT_FLOW),
        stt=(get("CALLSTREAM_STT") or "sphinx").lower(),
        tts=(get("CALLSTREAM_TTS") or "espeak").lower(),
        deepgram_api_key=get("DEEPGRAM_API_KEY"),
        deepgram_url=get("DEEPGRAM_URL"),
        deepgram_model=get("DEEPGRAM_MODEL") or "nova-3",
        aws_region=get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
        polly_endpoint_url=get("POLLY_ENDPOINT_URL"),
        aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=get("AWS_SESSION_TOKEN"),
        redis_url=get("REDIS_URL"),
        redis_prefix=get("CALLSTREAM_REDIS_PREFIX") or "callstream:",
        archive=get("CALLSTREAM_ARCHIVE") or "./archive",
        ops_token=get("CALLSTREAM_OPS_TOKEN"),
        log_level=(get("LOG_LEVEL") or "INFO").upper(),
        end_silence_ms=_int(env, "CALLSTREAM_END_SILENCE_MS", 700),
        vad_aggressiveness=_int(env, "CALLSTREAM_VAD_AGGRESSIVENESS", 2),
        max_messages_per_s=_int(env, "CALLSTREAM_MAX_MESSAGES_PER_S", 500),
        start_timeout_s=_float(env, "CALLSTREAM_START_TIMEOUT_S", 10.0),
        archive_spool=get("CALLSTREAM_ARCHIVE_SPOOL"),
        s3_endpoint_url=get("CALLSTREAM_S3_ENDPOINT_URL"),
        archive_retention_days=_age_days(env, "CALLSTREAM_ARCHIVE_RETENTION"),
        delete_twilio_recordings=_flag(env, "CALLSTREAM_DELETE_TWILIO_RECORDINGS"),
        archive_max_attempts=_int(env, "CALLSTREAM_ARCHIVE_MAX_ATTEMPTS", 20),
        drain_s=_int(env, "CALLSTREAM_DRAIN_S", 25),
        sphinx_workers=_int(env, "CALLSTREAM_SPHINX_WORKERS", 0),
    )
    check_settings(settings)
    return settings


def check_settings(s: Settings) -> None:
    """Start-up checks: each failure names the key and what to do."""
    if s.public_base_url:
        parts = urlsplit(s.public_base_url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ConfigError(
                f"PUBLIC_BASE_URL={s.public_base_url!r} must be the https://host[:port] "
                "address Twilio reaches this server at"
            )
        if parts.query or parts.fragment:
            raise ConfigError("PUBLIC_BASE_URL must not carry a query string or fragment")
    if s.speech not in ("stream", "twiml"):
        raise ConfigError(f"CALLSTREAM_SPEECH={s.speech!r}: use stream or twiml")
    if s.twilio_from_number and not (
        is_e164(s.twilio_from_number) or is_sip_uri(s.twilio_from_number)
    ):
        raise ConfigError(
            "TWILIO_FROM_NUMBER must be an E.164 number (+14155550100) or a sip: URI"
        )
    if s.stt not in ("sphinx", "deepgram", "none"):
        raise ConfigError(f"CALLSTREAM_STT={s.stt!r}: use sphinx, deepgram or none")
    if s.tts not in ("espeak", "polly"):
        raise ConfigError(f"CALLSTREAM_TTS={s.tts!r}: use espeak or polly")
    if s.stt == "deepgram" and not s.deepgram_api_key:
        raise ConfigError("CALLSTREAM_STT=deepgram needs DEEPGRAM_API_KEY")
    if s.tts == "polly" and not s.aws_region:
        raise ConfigError("CALLSTREAM_TTS=polly needs AWS_REGION")
    for key, url, schemes in (
        ("DEEPGRAM_URL", s.deepgram_url, ("https", "wss", "http", "ws")),
        ("POLLY_ENDPOINT_URL", s.polly_endpoint_url, ("https", "http")),
    ):
        if url and (urlsplit(url).scheme not in schemes or not urlsplit(url).netloc):
            raise ConfigError(f"{key}={url!r} must be a {' or '.join(schemes[:2])}://host[:port] URL")
    if bool(s.aws_access_key_id) != bool(s.aws_secret_access_key):
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both or neither")
    if bool(s.twilio_account_sid) != bool(s.twilio_auth_token) and s.twilio_account_sid:
        raise ConfigError("TWILIO_ACCOUNT_SID is set but TWILIO_AUTH_TOKEN is not: set both")
    if s.twilio_account_sid and not (
        s.twilio_account_sid.startswith("AC") and len(s.twilio_account_sid) == 34
    ):
        raise ConfigError("TWILIO_ACCOUNT_SID must look like AC followed by 32 hex digits")
    if not Path(s.flow_path).is_file():
        raise ConfigError(f"CALLSTREAM_FLOW={s.flow_path!r}: no such file")
    if s.redis_url and urlsplit(s.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "REDIS_URL must be redis://[:password@]host[:port][/db], rediss://… or unix://…"
        )
    if s.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL={s.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    if not 0 <= s.vad_aggressiveness <= 3:
        raise ConfigError("CALLSTREAM_VAD_AGGRESSIVENESS must be 0, 1, 2 or 3")
    if not 200 <= s.end_silence_ms <= 5000:
        raise ConfigError("CALLSTREAM_END_SILENCE_MS must be between 200 and 5000")
    if not 0 <= s.drain_s <= 3600:
        raise ConfigError("CALLSTREAM_DRAIN_S must be between 0 and 3600 (seconds calls may run on after SIGTERM)")
    if s.max_messages_per_s != 0 and s.max_messages_per_s < 100:
        # Twilio alone sends 50 media messages a second plus mark echoes and keys
        raise ConfigError("CALLSTREAM_MAX_MESSAGES_PER_S must be 0 (no limit) or at least 100")
    if not 0 <= s.sphinx_workers <= 64:
        raise ConfigError("CALLSTREAM_SPHINX_WORKERS must be between 1 and 64 decoder processes (unset: min(2, cores))")
    if not 0 < s.start_timeout_s <= 300:
        raise ConfigError("CALLSTREAM_START_TIMEOUT_S must be more than 0 and at most 300 seconds")
    check_archive_settings(s)


def check_archive_settings(s: Settings) -> None:
    if s.archive.startswith("s3://") and not urlsplit(s.archive).netloc:
        raise ConfigError(f"CALLSTREAM_ARCHIVE={s.archive!r}: an S3 archive is s3://bucket/prefix")
    if s.archive.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise ConfigError("CALLSTREAM_ARCHIVE=s3://… needs boto3: pip install boto3") from None
    if s.delete_twilio_recordings and not s.call_control_enabled:
        raise ConfigError(
            "CALLSTREAM_DELETE_TWILIO_RECORDINGS=1 needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        )
    if s.archive_max_attempts < 1:
        raise ConfigError("CALLSTREAM_ARCHIVE_MAX_ATTEMPTS must be at least 1")


def check_serving(s: Settings) -> None:
    """What `callstream serve` needs beyond `check_settings` (replay supplies
    its own throwaway Twilio credentials, so these are checked only here)."""
    if s.speech == "twiml" and not s.call_control_enabled:
        raise ConfigError(
            "CALLSTREAM_SPEECH=twiml needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: "
            "the agent speaks by updating the live call"
        )
