"""The Twilio side of a call, sans I/O: Media Streams messages and connection
state, the TwiML documents the agent emits, and request signature checks.

- `twiml.messages`: Twilio's Media Streams JSON ⇄ frozen dataclasses
  (`parse_message`, `media_message`/`mark_message`/`clear_message`, and the
  mirror `encode_inbound`/`parse_outbound` for tools that play Twilio).
- `twiml.stream`: `StreamConnection`, one socket's protocol state machine.
- `twiml.documents`: `<Connect><Stream>`, `<Dial>`, `<Record>`, fallback TwiML.
- `twiml.numbers`: E.164 and SIP URI checks, `mask_number` for logs.
- `twiml.signature`: X-Twilio-Signature for webhooks and the WebSocket upgrade.
- `twiml.errors`: `RemoteProtocolError` (the peer's fault) vs
  `LocalProtocolError` (ours), and the stable error kinds.

Nothing here imports asyncio, a web framework or a network client; a test
walks the imports to keep it so. Import the submodules directly (this package
imports nothing, so `twiml.messages` does not pull in twilio's TwiML builders).
"""
