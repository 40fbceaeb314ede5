"""Reading numbers out of text that anyone may have written (a header, an option, a
location string)."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """Only 0-9, at least one, as HTTP and Go's ``strconv.Atoi`` read numbers:
    ``str.isdigit()`` alone also takes "³", which ``int()`` refuses, and other scripts'
    digits, which ``int()`` reads."""
    return text.isascii() and text.isdigit()
