"""The playout tracker: marks tell what was heard; clear drops the rest."""

import pytest

from media.playout import PlayoutTracker


def test_marks_echoed_in_order_count_as_heard():
    p = PlayoutTracker()
    p.sent("1.1", say_id=1, duration_ms=200, now_ms=0)
    p.sent("1.2", say_id=1, duration_ms=200, now_ms=0)
    assert p.playing and p.outstanding(1) == 2
    echo = p.marked("1.1")
    assert echo is not None and echo.played and echo.say_id == 1
    assert p.heard_ms(1) == 200
    p.marked("1.2")
    assert p.heard_ms(1) == 400
    assert not p.playing and p.outstanding(1) == 0


def test_a_later_mark_settles_the_earlier_chunks_too():
    """Twilio plays in order: a later echo means the earlier audio played."""
    p = PlayoutTracker()
    for i in range(3):
        p.sent(f"m{i}", say_id=7, duration_ms=100, now_ms=0)
    p.marked("m2")
    assert p.heard_ms(7) == 300
    assert p.marked("m0") is None  # already settled


def test_clear_drops_unplayed_chunks_and_their_echoes_do_not_count():
    p = PlayoutTracker()
    p.sent("a", say_id=1, duration_ms=200, now_ms=0)
    p.sent("b", say_id=1, duration_ms=200, now_ms=0)
    p.sent("c", say_id=1, duration_ms=200, now_ms=0)
    p.marked("a")
    assert p.clear(now_ms=300) == 400
    assert not p.playing
    assert p.outstanding(1) == 2  # cleared marks still come back
    for name in ("b", "c"):
        echo = p.marked(name)
        assert echo is not None and not echo.played
    assert p.heard_ms(1) == 200
    assert p.outstanding(1) == 0


def test_unknown_mark_is_none():
    assert PlayoutTracker().marked("nope") is None


def test_queued_ms_estimates_pacing_on_the_media_timeline():
    p = PlayoutTracker()
    p.sent("a", say_id=1, duration_ms=200, now_ms=1000)
    p.sent("b", say_id=1, duration_ms=200, now_ms=1000)
    assert p.queued_ms(1000) == 400
    assert p.queued_ms(1300) == 100
    assert p.queued_ms(2000) == 0
    # after a gap, new audio starts playing when it arrives
    p.sent("c", say_id=2, duration_ms=200, now_ms=5000)
    assert p.queued_ms(5000) == 200
    p.clear(now_ms=5050)
    assert p.queued_ms(5050) == 0


def test_duplicate_mark_name_is_our_bug():
    p = PlayoutTracker()
    p.sent("a", say_id=1, duration_ms=20, now_ms=0)
    with pytest.raises(ValueError):
        p.sent("a", say_id=1, duration_ms=20, now_ms=0)


def test_heard_and_sent_are_per_prompt():
    p = PlayoutTracker()
    p.sent("1.1", say_id=1, duration_ms=200, now_ms=0)
    p.sent("2.1", say_id=2, duration_ms=300, now_ms=0)
    p.marked("1.1")
    assert (p.heard_ms(1), p.heard_ms(2)) == (200, 0)
    assert (p.sent_ms(1), p.sent_ms(2)) == (200, 300)
