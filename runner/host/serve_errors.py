"""What serving a fine-tune can end in besides success: refused before any change, or failed and rolled back."""


class ServeRefused(Exception):
    """Refused before anything changed (exit 3)."""


class ServeFailed(Exception):
    """The new configuration failed its health gate (exit 1); the message says what and how it was restored."""
