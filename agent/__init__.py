"""callstream: the application — settings, ASGI app, call sessions, dialog
engine and the adapters behind its ports."""
