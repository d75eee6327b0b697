"""Handing a live call on (transfer, conference, voicemail, hang-up) by REST,
and the defined outcome when Twilio will not take the update.

A refusal for good (20003 credentials, 21211, 20429 or 5xx after the retries
in agent/call_control.py) must not leave the caller in silence: the TwiML is
kept in the store under `handoff_key(call_sid)` and the session closes the
stream. Twilio then runs what follows `<Connect><Stream>`: a `<Redirect>` to
/twilio/continue, which answers with it (agent/call_routes.py), so the caller
is still transferred. 21220 ("call is not in progress") means the caller has
gone: there is nothing to continue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.ports import CallControl, CallControlError, CallStore
from twiml import documents

HANDOFF_TTL_S = 3600
NOT_IN_PROGRESS = 21220

Log = logging.LoggerAdapter[logging.Logger] | logging.Logger


def handoff_key(call_sid: str) -> str:
    """Store key of the TwiML a call continues with after its stream ends."""
    return f"handoff:{call_sid}"


@dataclass(frozen=True)
class UpdateFailed:
    """Twilio refused the update; `then` is what the caller gets instead."""

    error: CallControlError | None  # None: call control is off
    then: str  # continue_by_webhook | caller_gone

    @property
    def end_reason(self) -> str:
        return "caller_gone" if self.then == "caller_gone" else "call_update_failed"


async def hand_on(
    control: CallControl | None,
    store: CallStore,
    call_sid: str,
    twiml: str | None,
    *,
    kind: str,
    log: Log,
) -> UpdateFailed | None:
    """Update the live call with `twiml` (None: hang up). None when Twilio
    took it; else what failed, with the hand-on kept for /twilio/continue."""
    if control is None:
        log.warning(
            "call control is off (TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN unset): "
            "ending the stream; Twilio continues at /twilio/continue with the %s",
            kind,
        )
        await keep_handoff(store, call_sid, twiml, log)
        return UpdateFailed(None, "continue_by_webhook")
    try:
        if twiml is None:
            await control.hang_up(call_sid)
        else:
            await control.update_twiml(call_sid, twiml)
    except CallControlError as exc:
        if exc.code == NOT_IN_PROGRESS:
            log.info("call already ended (Twilio 21220): nothing to update")
            return UpdateFailed(exc, "caller_gone")
        log.error(
            "could not update the call for the %s (%s): ending the stream; "
            "Twilio continues at /twilio/continue with it",
            kind, exc,
        )
        await keep_handoff(store, call_sid, twiml, log)
        return UpdateFailed(exc, "continue_by_webhook")
    return None


async def keep_handoff(store: CallStore, call_sid: str, twiml: str | None, log: Log) -> None:
    document = twiml if twiml is not None else documents.hangup()
    try:
        await store.save(handoff_key(call_sid), {"twiml": document}, HANDOFF_TTL_S)
    except Exception:
        log.exception("could not keep the hand-on for /twilio/continue")


async def take_handoff(store: CallStore, call_sid: str) -> str | None:
    """The kept hand-on, once (a second stream end gets nothing)."""
    pending = await store.load(handoff_key(call_sid))
    if not pending or not isinstance(pending.get("twiml"), str):
        return None
    await store.save(handoff_key(call_sid), {}, HANDOFF_TTL_S)
    return str(pending["twiml"])
