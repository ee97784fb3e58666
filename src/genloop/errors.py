"""One exception type for bad input from a person, so every entry point answers it the same way.

The CLI prints a `UserError` as one line and exits with code 2; the server (later) turns it into an
HTTP 4xx. Anything else that escapes is a bug in genloop, not in the user's input.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (argument, config, file) that the user can fix; the message names problem and fix."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or `key=value` override that does not validate."""


class CheckpointError(UserError):
    """A model directory that is missing, corrupt, or does not match its config."""


class TokenizerError(UserError):
    """A tokenizer file that is missing or unreadable, or tokenizer settings that cannot work."""
