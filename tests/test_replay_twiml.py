"""The replay's stand-in for Twilio's TwiML engine, verb by verb, against a
scripted host (no sockets: the end-to-end replay tests cover those)."""

from __future__ import annotations

from collections import deque

from agent.replay_twiml import TwimlRunner

HANGUP = "<Response><Hangup/></Response>"


class Host:
    """Answers Twilio's requests from a script and records what the runner did."""

    def __init__(self, *answers: str, speech: list[tuple[int, int]] | None = None) -> None:
        self.answers = deque(answers)
        self.fetched: list[tuple[str, dict[str, str]]] = []
        self.streams: list[tuple[str, bool]] = []
        self.stopped: list[bool] = []
        self.open = False
        self.speech = speech or []

    async def fetch(self, url: str, params: dict[str, str]) -> str:
        self.fetched.append((url, params))
        return self.answers.popleft() if self.answers else HANGUP

    async def open_stream(self, url, parameters, *, bidirectional, name):  # type: ignore[no-untyped-def]
        self.streams.append((url, bidirectional))
        self.open = True

    async def stop_stream(self, *, bidirectional: bool) -> None:
        self.stopped.append(bidirectional)
        self.open = False

    def stream_open(self, *, bidirectional: bool) -> bool:
        return self.open

    async def synthesize(self, text: str, voice: str, language: str) -> bytes:
        return b"\x7f" * (len(text) * 80)  # 10 ms a character

    def silence_ends(self, start_ms: int, silence_ms: int, max_ms: int) -> int:
        t = start_ms
        for onset, end in self.speech:
            if end > t and onset - t < silence_ms:
                t = end
        return min(t + silence_ms, start_ms + max_ms)


async def play(runner: TwimlRunner, start_ms: int, end_ms: int) -> bytes:
    """Run the runner frame by frame, as the simulated call does."""
    audio = b""
    for now in range(start_ms, end_ms, 20):
        await runner.step(now)
        if runner.ended:
            break
        audio += runner.agent_frame()
    return audio


async def test_say_then_redirect_runs_the_answer():
    host = Host("<Response><Pause length='1'/><Hangup/></Response>")
    runner = TwimlRunner(host)
    await runner.load("<Response><Say voice='Polly.Joanna'>Hello there</Say><Redirect>https://x/next</Redirect></Response>", 0)
    audio = await play(runner, 0, 3000)
    assert len(audio) == 880 and runner.agent_starts_ms == [0]
    assert host.fetched == [("https://x/next", {})]
    assert runner.ended and runner.outcome == "hangup"


async def test_a_key_stops_a_gathered_say_and_posts_the_digits():
    host = Host()
    runner = TwimlRunner(host)
    await runner.load(
        "<Response><Gather numDigits='1' timeout='1' action='https://x/said'>"
        "<Say>A long prompt to be cut short</Say></Gather></Response>",
        0,
    )
    await play(runner, 0, 100)
    assert runner.gathering and await runner.key("2", 100)
    assert runner.clears_ms == [100]
    assert host.fetched == [("https://x/said", {"Digits": "2"})]


async def test_a_gather_times_out_after_its_nested_verbs():
    host = Host()
    runner = TwimlRunner(host)
    await runner.load(
        "<Response><Gather timeout='2' action='https://x/g'><Say>Hi</Say></Gather>"
        "<Redirect>https://x/none</Redirect></Response>",
        0,
    )
    await play(runner, 0, 1000)
    assert host.fetched == []
    await play(runner, 1000, 2100)  # "Hi" (20 ms) + 2 s of waiting
    assert host.fetched == [("https://x/none", {})]


async def test_a_gather_posts_empty_digits_when_asked_and_stops_at_the_finish_key():
    host = Host("<Response><Gather action='https://x/keys'/></Response>")
    runner = TwimlRunner(host)
    await runner.load("<Response><Gather timeout='1' actionOnEmptyResult='true' action='https://x/e'/></Response>", 0)
    await play(runner, 0, 1100)
    assert host.fetched == [("https://x/e", {"Digits": ""})]
    for digit in "12#":
        assert await runner.key(digit, 1200)
    assert host.fetched[-1] == ("https://x/keys", {"Digits": "12", "FinishedOnKey": "#"})


async def test_an_unanswered_dial_rings_its_timeout_then_posts_the_action():
    host = Host("<Response><Connect><Stream url='wss://x/media'/></Connect></Response>")
    runner = TwimlRunner(host, dial_status="no-answer")
    await runner.load(
        "<Response><Dial action='https://x/dial-result' timeout='20'><Number>+14155550100</Number></Dial></Response>", 0
    )
    await play(runner, 0, 19_980)
    assert host.fetched == [] and runner.outcome == "transfer:+14155550100"
    await runner.step(20_000)
    [(url, params)] = host.fetched
    assert url == "https://x/dial-result" and params["DialCallStatus"] == "no-answer"
    assert params["DialCallSid"].startswith("CA") and not runner.ended
    assert host.streams == [("wss://x/media", True)]  # the agent is back on a new stream


async def test_an_answered_dial_or_a_conference_ends_the_replay():
    runner = TwimlRunner(Host())
    await runner.load("<Response><Dial action='https://x/a'><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>", 0)
    await runner.step(0)
    assert runner.ended and runner.outcome == "transfer:sip:desk@pbx.example.com"
    runner = TwimlRunner(Host(), dial_status="busy")
    await runner.load("<Response><Dial><Conference>support-CA1</Conference></Dial></Response>", 0)
    await runner.step(0)
    assert runner.ended and runner.outcome == "conference:support-CA1"


async def test_a_record_ends_the_replay_unless_the_fixture_follows_it():
    runner = TwimlRunner(Host())
    await runner.load("<Response><Record action='https://x/voice?resume_state=goodbye'/></Response>", 0)
    await runner.step(0)
    assert runner.ended and runner.outcome == "voicemail"
    host = Host(speech=[(1000, 3000), (4000, 6000)])
    runner = TwimlRunner(host, follow_record=True)
    await runner.load("<Response><Record timeout='5' maxLength='120' action='https://x/rec'/></Response>", 0)
    await play(runner, 0, 10_980)
    assert host.fetched == []
    await runner.step(11_000)  # the caller's last words end at 6 s, then 5 s of silence
    [(url, params)] = host.fetched
    assert url == "https://x/rec" and params["RecordingDuration"] == "11"


async def test_a_rest_update_replaces_the_document_and_stops_a_bidirectional_stream():
    host = Host()
    runner = TwimlRunner(host)
    await runner.load("<Response><Connect><Stream url='wss://x/media'/></Connect><Say>never</Say></Response>", 0)
    await runner.step(0)
    assert host.open
    runner.update({"Twiml": "<Response><Say>Moved on</Say><Hangup/></Response>"})
    audio = await play(runner, 20, 400)
    assert host.stopped == [True] and len(audio) == 8 * 80 and runner.outcome == "hangup"
    runner = TwimlRunner(Host())
    runner.update({"Status": "completed"})
    await runner.step(0)
    assert runner.ended and runner.outcome == "hangup"


async def test_a_stream_the_server_ends_goes_on_to_the_next_verb():
    host = Host("<Response><Dial><Number>+14155550100</Number></Dial></Response>")
    runner = TwimlRunner(host)
    await runner.load(
        "<Response><Connect><Stream url='wss://x/media'/></Connect><Redirect>https://x/continue</Redirect></Response>", 0
    )
    await runner.step(0)
    assert not runner.ended
    host.open = False  # the server closed it
    await runner.step(20)
    assert host.fetched == [("https://x/continue", {})] and runner.outcome == "transfer:+14155550100"


async def test_bad_twiml_and_redirect_loops_are_errors():
    runner = TwimlRunner(Host())
    await runner.load("<Response><Dial>", 0)
    assert runner.ended and "invalid TwiML" in (runner.error or "")
    looping = "<Response><Redirect>https://x/again</Redirect></Response>"
    runner = TwimlRunner(Host(*[looping] * 100))
    await runner.load(looping, 0)
    await runner.step(0)
    assert runner.ended and "loop" in (runner.error or "")
    runner = TwimlRunner(Host())
    await runner.load("<Response><Enqueue>q</Enqueue></Response>", 0)
    await runner.step(0)
    assert "does not emulate <Enqueue>" in (runner.error or "")
