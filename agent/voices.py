"""Voice names: the flow speaks in Amazon Polly voices; offline TTS maps them to eSpeak NG.

A flow says `voice: Polly.Joanna` (Twilio's `<Say voice=…>` spelling), or
`Polly.Joanna-Neural`, or just `Joanna`. `parse_voice` reads any of these into
a `VoiceSpec`; the Polly adapter takes `polly_id` and `engine` from it, the
eSpeak adapter takes `espeak_voice`.

The table lists Polly's standard-engine voices and the common neural-only ones,
with gender and language as in Polly's voice list ("Voices in Amazon Polly").
`neural` is whether the voice exists on the neural engine — check it against
`DescribeVoices` before relying on it for billing or fallbacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Gender = Literal["female", "male"]
Engine = Literal["standard", "neural", "generative", "long-form"]


@dataclass(frozen=True, slots=True)
class PollyVoice:
    voice_id: str
    gender: Gender
    language: str  # BCP-47 as Polly writes it: en-US, en-GB, es-US, …
    standard: bool
    neural: bool


def _v(voice_id: str, gender: Gender, language: str, standard: bool, neural: bool) -> PollyVoice:
    return PollyVoice(voice_id, gender, language, standard, neural)


F: Gender = "female"
M: Gender = "male"

POLLY_VOICES: dict[str, PollyVoice] = {
    v.voice_id.lower(): v
    for v in (
        # English (US)
        _v("Joanna", F, "en-US", True, True),
        _v("Salli", F, "en-US", True, True),
        _v("Kimberly", F, "en-US", True, True),
        _v("Kendra", F, "en-US", True, True),
        _v("Ivy", F, "en-US", True, True),
        _v("Ruth", F, "en-US", False, True),
        _v("Danielle", F, "en-US", False, True),
        _v("Matthew", M, "en-US", True, True),
        _v("Joey", M, "en-US", True, True),
        _v("Justin", M, "en-US", True, True),
        _v("Kevin", M, "en-US", False, True),
        _v("Gregory", M, "en-US", False, True),
        _v("Stephen", M, "en-US", False, True),
        # English (elsewhere)
        _v("Amy", F, "en-GB", True, True),
        _v("Emma", F, "en-GB", True, True),
        _v("Brian", M, "en-GB", True, True),
        _v("Arthur", M, "en-GB", False, True),
        _v("Geraint", M, "en-GB-WLS", True, False),
        _v("Nicole", F, "en-AU", True, False),
        _v("Olivia", F, "en-AU", False, True),
        _v("Russell", M, "en-AU", True, False),
        _v("Aditi", F, "en-IN", True, False),
        _v("Raveena", F, "en-IN", True, False),
        _v("Kajal", F, "en-IN", False, True),
        _v("Niamh", F, "en-IE", False, True),
        _v("Aria", F, "en-NZ", False, True),
        _v("Ayanda", F, "en-ZA", False, True),
        # Spanish, French, German, Italian, Portuguese, Dutch
        _v("Lupe", F, "es-US", True, True),
        _v("Penelope", F, "es-US", True, False),
        _v("Miguel", M, "es-US", True, False),
        _v("Pedro", M, "es-US", False, True),
        _v("Conchita", F, "es-ES", True, False),
        _v("Lucia", F, "es-ES", True, True),
        _v("Enrique", M, "es-ES", True, False),
        _v("Sergio", M, "es-ES", False, True),
        _v("Mia", F, "es-MX", True, True),
        _v("Celine", F, "fr-FR", True, False),
        _v("Lea", F, "fr-FR", True, True),
        _v("Mathieu", M, "fr-FR", True, False),
        _v("Remi", M, "fr-FR", False, True),
        _v("Chantal", F, "fr-CA", True, False),
        _v("Gabrielle", F, "fr-CA", False, True),
        _v("Liam", M, "fr-CA", False, True),
        _v("Marlene", F, "de-DE", True, False),
        _v("Vicki", F, "de-DE", True, True),
        _v("Hans", M, "de-DE", True, False),
        _v("Daniel", M, "de-DE", False, True),
        _v("Carla", F, "it-IT", True, False),
        _v("Bianca", F, "it-IT", True, True),
        _v("Giorgio", M, "it-IT", True, False),
        _v("Adriano", M, "it-IT", False, True),
        _v("Camila", F, "pt-BR", True, True),
        _v("Vitoria", F, "pt-BR", True, True),
        _v("Ricardo", M, "pt-BR", True, False),
        _v("Thiago", M, "pt-BR", False, True),
        _v("Ines", F, "pt-PT", True, True),
        _v("Cristiano", M, "pt-PT", True, False),
        _v("Lotte", F, "nl-NL", True, False),
        _v("Ruben", M, "nl-NL", True, False),
        _v("Laura", F, "nl-NL", False, True),
    )
}

_ENGINE_SUFFIXES: dict[str, Engine] = {
    "neural": "neural",
    "generative": "generative",
    "longform": "long-form",
    "long-form": "long-form",
}

# eSpeak NG base voice per language (the part before "+variant"). The variants
# f1..f5 / m1..m7 change pitch and formants; f3 and m3 are the clearest on
# 8 kHz telephone audio.
_ESPEAK_LANGUAGE: dict[str, str] = {
    "en-us": "en-us",
    "en-ca": "en-us",
    "en-gb": "en",  # eSpeak's "en" is British English ("en-gb" is not a voice name)
    "en-gb-wls": "en",
    "en-au": "en",  # eSpeak has no Australian English; British is closer than US
    "en-nz": "en",
    "en-za": "en",
    "en-ie": "en",
    "en-in": "en",
    "es-us": "es-419",
    "es-mx": "es-419",
    "es-es": "es",
    "fr-fr": "fr",
    "fr-ca": "fr",
    "de-de": "de",
    "it-it": "it",
    "pt-br": "pt-br",
    "pt-pt": "pt",
    "nl-nl": "nl",
}
_ESPEAK_VARIANT: dict[Gender, str] = {"female": "f3", "male": "m3"}

DEFAULT_ESPEAK_VOICE = "en-us+f3"


@dataclass(frozen=True, slots=True)
class VoiceSpec:
    """A flow's voice, understood: which Polly voice and engine, and its eSpeak stand-in."""

    name: str  # as the flow wrote it
    polly: PollyVoice | None  # None: not a Polly voice we know
    engine: Engine
    espeak_voice: str

    @property
    def polly_id(self) -> str | None:
        return self.polly.voice_id if self.polly else None


_warned: set[str] = set()


def parse_voice(name: str, language: str = "en-US") -> VoiceSpec:
    """Read `Polly.Joanna`, `Polly.Joanna-Neural`, `Joanna`, or an eSpeak voice
    (`espeak:en-us+m3`) into a `VoiceSpec`.

    An unknown name falls back to the flow's `language` (female eSpeak voice),
    and logs one warning per name.
    """
    raw = name.strip()
    if raw.lower().startswith("espeak:"):
        return VoiceSpec(raw, None, "standard", raw.split(":", 1)[1])
    base = raw[6:] if raw.lower().startswith("polly.") else raw
    engine: Engine = "standard"
    stem, _, suffix = base.partition("-")
    if suffix.lower() in _ENGINE_SUFFIXES:
        engine = _ENGINE_SUFFIXES[suffix.lower()]
        base = stem
    polly = POLLY_VOICES.get(base.lower())
    if polly is None:
        if raw not in _warned:
            _warned.add(raw)
            log.warning(
                "voice %r is not a Polly voice callstream knows; using eSpeak %s",
                raw,
                espeak_voice_for(None, language),
            )
        return VoiceSpec(raw, None, engine, espeak_voice_for(None, language))
    return VoiceSpec(raw, polly, engine, espeak_voice_for(polly, language))


def espeak_voice_for(polly: PollyVoice | None, language: str) -> str:
    """The eSpeak NG voice that stands in for `polly` (or for `language` if unknown)."""
    lang = (polly.language if polly else language).lower()
    # unknown regional variants fall back to the bare language ("sv-se" → "sv")
    base = _ESPEAK_LANGUAGE.get(lang) or lang.split("-")[0] or "en-us"
    gender: Gender = polly.gender if polly else "female"
    return f"{base}+{_ESPEAK_VARIANT[gender]}"
