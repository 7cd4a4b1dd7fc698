"""Passwords out of what is shown: a database URL, or a message that may quote one."""

from __future__ import annotations

import re

__all__ = ["mask"]

_PASSWORD_IN_URI = re.compile(r"(?P<head>\w+://[^:/@?#]*:)(?P<password>[^@/?#]*)(?=@)")
_PASSWORD_KEY = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S*)",
                           re.IGNORECASE)


def mask(text: str, url: str | None = None) -> str:
    """``text`` (a URL, or a message that may quote one) with every password hidden, as
    ``***``: the one written in ``url`` too, wherever ``text`` repeats it."""
    masked = _PASSWORD_IN_URI.sub(r"\g<head>***", text)
    masked = _PASSWORD_KEY.sub(r"\g<head>***", masked)
    if url:
        for pattern in (_PASSWORD_IN_URI, _PASSWORD_KEY):
            for found in pattern.finditer(url):
                secret = found.group("password").strip("'")
                if len(secret) >= 3:  # (shorter ones would mask ordinary words)
                    masked = masked.replace(secret, "***")
    return masked
