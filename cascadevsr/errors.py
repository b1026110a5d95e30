"""The one exception type that means "the user gave us something we cannot use"."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the CLI prints the message as one sentence and exits with code 2."""

    exit_code = 2
