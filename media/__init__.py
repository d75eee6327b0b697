"""Audio for telephone calls: pure functions and state machines, no I/O.

Everything here works on the media timeline (milliseconds of audio), never on
the wall clock, and imports neither asyncio nor any network library.
"""
