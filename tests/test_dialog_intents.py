"""Word matching for intents and spoken digits."""

from __future__ import annotations

import pytest

from agent.intents import IntentMatcher, find_phrase, spoken_digits, words

MENU = IntentMatcher(
    [
        ("billing", ["billing", "bill", "pay my bill"], "1"),
        ("support", ["support", "technical"], "2"),
        ("agent", ["agent", "talk to someone"], "0"),
    ]
)


def test_words_ignore_case_and_punctuation() -> None:
    assert words("  Billing, PLEASE!! I don't—know… ") == ("billing", "please", "i", "dont", "know")
    assert words("¿Qué?") == ("qué",)
    assert words("") == ()


def test_find_phrase() -> None:
    assert find_phrase(("a", "b", "c", "b", "c"), ("b", "c")) == 1
    assert find_phrase(("a", "b"), ("b", "c")) is None
    assert find_phrase(("a",), ()) is None


@pytest.mark.parametrize(
    ("heard", "intent"),
    [
        ("billing", "billing"),
        ("BILLING!", "billing"),
        ("I'd like to pay my bill.", "billing"),
        ("I need to talk to an agent please", "agent"),
        ("can I talk to someone", "agent"),
        ("talk to me someone", None),  # a phrase's words must be contiguous
        ("billings", None),  # whole words only
        ("rebill", None),
        ("", None),
        ("um", None),
    ],
)
def test_match_speech(heard: str, intent: str | None) -> None:
    assert MENU.match_speech(heard) == intent


def test_earliest_phrase_wins() -> None:
    assert MENU.match_speech("support, not billing") == "support"
    assert MENU.match_speech("my bill, not support") == "billing"


def test_longer_phrase_wins_a_tie() -> None:
    matcher = IntentMatcher([("pay", ["pay"], None), ("pay_bill", ["pay bill"], None)])
    assert matcher.match_speech("pay bill now") == "pay_bill"
    assert matcher.match_speech("pay now") == "pay"


def test_first_declared_wins_an_exact_tie() -> None:
    matcher = IntentMatcher([("a", ["same"], None), ("b", ["same"], None)])
    assert matcher.match_speech("same") == "a"


def test_match_dtmf() -> None:
    assert MENU.match_dtmf("1") == "billing"
    assert MENU.match_dtmf("0") == "agent"
    assert MENU.match_dtmf("5") is None


@pytest.mark.parametrize(
    ("heard", "digits"),
    [
        ("one two three", "123"),
        ("four oh one", "401"),
        ("Zero, nine; eight.", "098"),
        ("it's 12 34", "1234"),
        ("my number is five five five", "555"),
        ("I don't know", ""),
        ("", ""),
    ],
)
def test_spoken_digits(heard: str, digits: str) -> None:
    assert spoken_digits(heard) == digits
