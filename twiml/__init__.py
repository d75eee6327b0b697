"""The Twilio side of a call, sans I/O: Media Streams messages and connection
state, the TwiML documents the agent emits, and request signature checks."""
