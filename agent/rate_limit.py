"""A message budget for one Media Streams socket: a token bucket in wall time.

Twilio sends 50 media messages a second, plus a mark echo for each mark we
send and a message per key press; a peer sending far more is broken or
hostile, and parsing its flood would take CPU from every other call. The
session spends one token per inbound message and drops (and counts) what the
bucket cannot pay for.

Theory of operation
-------------------
The bucket holds at most `capacity` tokens (`burst_s` seconds' worth) and
earns `per_s` a second. `take()` is the per-message path and reads no clock:
it spends a token while there is one. Only when the bucket is empty does the
caller read the clock and call `take_at(now)`, which adds what the time since
the last refill earned (capped at `capacity`) and spends one if it can. A
well-behaved stream therefore reads the clock once every `capacity` messages.

Because tokens are added only when the bucket runs dry, a bucket that sat
full for a while is refilled to full again the moment it empties: after a
quiet spell a peer may send up to `2 * capacity` messages at once before it
is held to `per_s`. That is the price of not reading the clock per message.

Pure: time is an argument (seconds, any monotonic origin); no I/O.
"""

from __future__ import annotations


class MessageBudget:
    def __init__(self, per_s: float, now: float, *, burst_s: float = 2.0) -> None:
        if per_s <= 0:
            raise ValueError("per_s must be positive")
        self.per_s = per_s
        self.capacity = max(1, int(per_s * burst_s))
        self.tokens = self.capacity
        self._refilled_at = now

    def take(self) -> bool:
        """Spend a token if one is left (no clock: the per-message path)."""
        if self.tokens:
            self.tokens -= 1
            return True
        return False

    def take_at(self, now: float) -> bool:
        """The bucket ran dry: add what the time since the last refill earned,
        then spend a token if there is one. False: drop the message."""
        earned = int((now - self._refilled_at) * self.per_s)
        if earned > 0:
            if self.tokens + earned >= self.capacity:
                self.tokens, self._refilled_at = self.capacity, now
            else:  # keep the fraction of a token already earned
                self.tokens += earned
                self._refilled_at += earned / self.per_s
        return self.take()
