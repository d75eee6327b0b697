"""TwimlSpeaker and SerialCallControl on their own: prompts as call updates,
Twilio's callbacks, barge-in, and updates to one call in order."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree

from agent.call_control import SerialCallControl
from agent.dialog_types import Say
from agent.ports import CallControlError
from agent.speaker_twiml import CallbackUrls, TwimlSpeaker

BASE = "https://voice.example.com"
CALL = "CA" + "1" * 32


class RecordingControl:
    """A CallControl double: keeps the updates; may fail or wait to answer."""

    def __init__(self) -> None:
        self.updates: list[str | None] = []
        self.fail: CallControlError | None = None
        self.gate: asyncio.Event | None = None

    async def update_twiml(self, call_sid: str, twiml: str) -> None:
        await self._take(twiml)

    async def hang_up(self, call_sid: str) -> None:
        await self._take(None)

    async def _take(self, twiml: str | None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.updates.append(twiml)


def prompt(say_id: int, text: str = "Say billing or support.", *, listens: bool = True, barge_in: bool = True) -> Say:
    return Say(say_id, "menu", text, text, "Polly.Joanna", "en-US", barge_in, listens=listens)


class Rig:
    def __init__(self) -> None:
        self.control = RecordingControl()
        self.now = 0
        self.failures: list[tuple[str, CallControlError]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.speaker = TwimlSpeaker(
            CALL,
            SerialCallControl(self.control),
            CallbackUrls(BASE),
            self.spawn,
            clock=lambda: self.now,
            on_update_failed=lambda what, exc: self.failures.append((what, exc)),
        )

    def spawn(self, coro, name):  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        return task

    async def settle(self) -> None:
        while pending := [t for t in self.tasks if not t.done()]:
            await asyncio.wait(pending)


def tags(twiml: str | None) -> list[str]:
    assert twiml is not None
    return [v.tag for v in ElementTree.fromstring(twiml)]


async def test_a_prompt_is_a_call_update_and_ends_with_twilios_callback():
    rig = Rig()
    rig.now = 40
    rig.speaker.say(prompt(1))
    assert rig.speaker.speaking and rig.speaker.barge_in_allowed
    await rig.settle()
    [update] = rig.control.updates
    assert tags(update) == ["Gather"] and f"{BASE}/twilio/said?say_id=1" in update  # type: ignore[operator]
    assert rig.speaker.said(1, 3040)
    [done] = rig.speaker.take_finished()
    assert done.say.say_id == 1 and done.total_ms == 2000  # minus the Gather's second after it
    assert not rig.speaker.speaking and rig.speaker.document() == CallbackUrls(BASE).hold()


async def test_a_prompt_without_keys_redirects_and_is_measured_exactly():
    rig = Rig()
    rig.speaker.say(prompt(1, "Goodbye.", listens=False))
    await rig.settle()
    assert tags(rig.control.updates[0]) == ["Say", "Redirect"]
    rig.speaker.said(1, 900)
    assert rig.speaker.take_finished()[0].total_ms == 900


async def test_queued_prompts_go_out_as_answers_to_twilio_not_by_rest():
    rig = Rig()
    rig.speaker.say(prompt(1))
    rig.speaker.say(prompt(2, "Please enter your account number."))
    await rig.settle()
    assert len(rig.control.updates) == 1  # the second waits for the first
    with rig.speaker.answering():
        assert rig.speaker.is_answering
        assert rig.speaker.said(1, 5000)
    rig.now = 5000
    answer = rig.speaker.document()
    assert "account number" in answer and "say_id=2" in answer
    await rig.settle()
    assert len(rig.control.updates) == 1
    assert not rig.speaker.said(1, 5100)  # stale: already over


async def test_barge_in_holds_by_rest_and_estimates_what_was_heard():
    rig = Rig()
    rig.now = 20
    rig.speaker.say(prompt(1, "Thanks for calling Acme. Say billing, support or agent."))
    await rig.settle()
    [cut] = rig.speaker.interrupt(1520)
    assert cut.heard_ms == 1500 and cut.total_ms == len(cut.say.log_text) * 65
    assert cut.heard_text == "Thanks for calling"
    await rig.settle()
    assert tags(rig.control.updates[-1]) == ["Gather", "Redirect"]  # hold
    assert not rig.speaker.speaking and rig.speaker.interrupt(1600) == []


async def test_a_key_that_stopped_the_say_needs_no_update():
    rig = Rig()
    rig.speaker.say(prompt(1))
    await rig.settle()
    assert rig.speaker.said(1, 700, key_pressed=True)  # Twilio's Gather stopped it
    assert rig.speaker.speaking and not rig.speaker.take_finished()
    [cut] = rig.speaker.interrupt(700)
    assert cut.heard_ms == 700
    await rig.settle()
    assert len(rig.control.updates) == 1  # no hold: Twilio already stopped the Say


async def test_a_key_after_the_say_finished_it():
    rig = Rig()
    rig.speaker.say(prompt(1, "Hi."))
    await rig.settle()
    assert rig.speaker.said(1, 1500, key_pressed=True)  # longer than "Hi." could take
    assert rig.speaker.take_finished()[0].total_ms == 1500


async def test_a_failed_update_keeps_the_prompt_for_the_next_callback():
    rig = Rig()
    rig.control.fail = CallControlError("nope", code=20003)
    rig.speaker.say(prompt(1))
    await rig.settle()
    assert [(what, exc.code) for what, exc in rig.failures] == [("say", 20003)]
    assert "say_id=1" in rig.speaker.document()


async def test_serial_updates_keep_order_and_skip_what_a_newer_one_replaces():
    inner = RecordingControl()
    inner.gate = asyncio.Event()
    control = SerialCallControl(inner)
    first = asyncio.create_task(control.send(CALL, "<Response><Say>1</Say></Response>"))
    await asyncio.sleep(0)
    second = asyncio.create_task(control.send(CALL, "<Response><Pause/></Response>"))
    third = asyncio.create_task(control.hang_up(CALL))
    await asyncio.sleep(0)
    inner.gate.set()
    assert await first is True and await second is False
    await third
    assert inner.updates == ["<Response><Say>1</Say></Response>", None]
    assert (control.sent, control.skipped) == (2, 1)


async def test_a_lost_said_callback_does_not_stall_the_dialog():
    rig = Rig()
    rig.now = 100
    rig.speaker.say(prompt(1, "Hi there."))  # estimated 585 ms
    rig.speaker.say(prompt(2))
    await rig.settle()
    rig.speaker.pump(100 + 2 * 585 + 3000)
    assert not rig.speaker.has_finished
    rig.now = 100 + 2 * 585 + 3001
    rig.speaker.pump(rig.now)
    [done] = rig.speaker.take_finished()
    assert done.say.say_id == 1 and done.total_ms == 2 * 585 + 3001
    await rig.settle()
    assert len(rig.control.updates) == 2 and "say_id=2" in (rig.control.updates[1] or "")  # the next one goes out
