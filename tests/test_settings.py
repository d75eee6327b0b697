"""Settings: read once at start-up; each mistake names the key and the fix."""

import pytest

from agent.settings import ConfigError, load_settings

ACCOUNT = "AC" + "a" * 32


def test_embedded_defaults_need_nothing():
    s = load_settings({}, env_file=None)
    assert (s.stt, s.tts, s.redis_url, s.twilio_api_base) == ("sphinx", "espeak", None, "https://api.twilio.com")
    assert not s.validate_signatures and not s.call_control_enabled
    assert s.flow_path.endswith("fixtures/flows/acme.yaml")
    assert s.base_url_for("127.0.0.1", 8080) == "http://127.0.0.1:8080"


def test_public_base_url_wins_for_the_base_url():
    s = load_settings({"PUBLIC_BASE_URL": "https://voice.example.com/"}, env_file=None)
    assert s.base_url_for("0.0.0.0", 8080) == "https://voice.example.com"


def test_token_turns_on_signature_checks():
    s = load_settings({"TWILIO_AUTH_TOKEN": "t", "TWILIO_ACCOUNT_SID": ACCOUNT}, env_file=None)
    assert s.validate_signatures and s.call_control_enabled


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env = tmp_path / ".env"
    env.write_text("LOG_LEVEL=debug\nCALLSTREAM_OPS_TOKEN=from-file\n")
    s = load_settings({"CALLSTREAM_OPS_TOKEN": "from-env"}, env_file=str(env))
    assert s.log_level == "DEBUG" and s.ops_token == "from-env"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CALLSTREAM_STT": "whisper"}, "CALLSTREAM_STT"),
        ({"CALLSTREAM_TTS": "festival"}, "CALLSTREAM_TTS"),
        ({"CALLSTREAM_STT": "deepgram"}, "DEEPGRAM_API_KEY"),
        ({"CALLSTREAM_TTS": "polly"}, "AWS_REGION"),
        ({"TWILIO_ACCOUNT_SID": ACCOUNT}, "TWILIO_AUTH_TOKEN"),
        ({"TWILIO_ACCOUNT_SID": "AC123", "TWILIO_AUTH_TOKEN": "t"}, "TWILIO_ACCOUNT_SID"),
        ({"PUBLIC_BASE_URL": "ftp://x"}, "PUBLIC_BASE_URL"),
        ({"PUBLIC_BASE_URL": "https://x/?a=1"}, "PUBLIC_BASE_URL"),
        ({"CALLSTREAM_FLOW": "/nope.yaml"}, "CALLSTREAM_FLOW"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"CALLSTREAM_END_SILENCE_MS": "soon"}, "CALLSTREAM_END_SILENCE_MS"),
        ({"CALLSTREAM_VAD_AGGRESSIVENESS": "7"}, "CALLSTREAM_VAD_AGGRESSIVENESS"),
        ({"DEEPGRAM_URL": "api.deepgram.com"}, "DEEPGRAM_URL"),
        ({"POLLY_ENDPOINT_URL": "ftp://polly"}, "POLLY_ENDPOINT_URL"),
        ({"AWS_ACCESS_KEY_ID": "AKIA0"}, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_config_errors_name_the_key(env, names):
    with pytest.raises(ConfigError, match=names):
        load_settings(env, env_file=None)


def test_cloud_speech_settings_choose_the_vendor_adapters_and_their_fallbacks():
    from agent.wiring import build_fallbacks, build_speech_to_text, build_text_to_speech

    s = load_settings(
        {"CALLSTREAM_STT": "deepgram", "DEEPGRAM_API_KEY": "k", "DEEPGRAM_URL": "http://127.0.0.1:9",
         "DEEPGRAM_MODEL": "nova-2", "CALLSTREAM_TTS": "polly", "AWS_REGION": "eu-west-1"},
        env_file=None,
    )
    stt, tts = build_speech_to_text(s), build_text_to_speech(s)
    assert stt is not None and stt.name == "deepgram" and tts.name == "polly"
    assert stt.options.model == "nova-2" and not stt.supports_keyterms  # type: ignore[attr-defined]
    stt_fallback, tts_fallback = build_fallbacks(s)
    assert stt_fallback is not None and stt_fallback.name == "sphinx"
    assert tts_fallback is not None and tts_fallback.name == "espeak"
    assert build_fallbacks(load_settings({}, env_file=None)) == (None, None)
