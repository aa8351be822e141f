"""Keep secrets out of messages: mask connection URLs and scrub passwords from error texts.

``mask_url("postgresql://app:s3cret@db:5432/social")`` → ``postgresql://app:***@db:5432/social``.
``redact(text, url)`` removes every form of the URL and its password from a text (for example a
driver's error message) before anything prints, logs or stores it. :class:`MaskingStream` masks
whatever reaches the screen: the entrypoint puts it in front of stdout and stderr.
"""
from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

MASK = "***"
_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "pwd", "secret", "token", "api_key", "apikey"})
# key=value connection strings (libpq "host=db password=x") and URL query parameters
_KEYWORD_SECRET = re.compile(
    r"(?i)\b(" + "|".join(sorted(_SECRET_PARAMS)) + r")(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)"
)


def mask_url(url: str | None) -> str:
    """The URL with its password (in the user part or the query) replaced by ``***``.

    Works for ``scheme://user:password@host:port/db?…`` URLs (even with unescaped ``/`` or ``@``
    in the password) and libpq ``key=value`` strings.
    """
    if not url:
        return "<no URL>"
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            rest = f"{user}:{MASK}@{hostpart}" if colon else f"{user}@{hostpart}"
        url = f"{scheme}{sep}{rest}"
    return _KEYWORD_SECRET.sub(lambda m: f"{m[1]}{m[2]}{MASK}", url)


def url_secrets(url: str | None) -> list[str]:
    """The password(s) of a URL, raw, decoded and percent-encoded, longest first."""
    if not url:
        return []
    found = {m[3].strip("'") for m in _KEYWORD_SECRET.finditer(url)}
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo:
        found.add(userinfo.partition(":")[2])
    for secret in list(found):
        found.update({unquote(secret), quote(unquote(secret), safe="")})
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_command_line(args: list[str]) -> list[str]:
    """Command-line arguments with the password of every ``key=scheme://…`` value, and of every URL
    given as an argument of its own (``--database-url scheme://…``), masked."""
    masked = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and "://" in value and "://" not in key:
            masked.append(f"{key}{sep}{mask_url(value)}")
        else:
            masked.append(mask_url(arg) if "://" in arg else arg)
    return masked


def redact(text: str, *urls: str | None) -> str:
    """``text`` with each URL replaced by its masked form and every password in it by ``***``."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, mask_url(url))
        for secret in url_secrets(url):
            text = text.replace(secret, MASK)
    return text


# scheme://user:password@ anywhere in a text; the password runs to the last "@" before a blank or quote
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@'\"]*):[^\s'\"]*@")
MIN_SECRET_CHARS = 4  # shorter values of secret variables are not searched for (they would mask common words)


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every URL password, ``password=…``-style value and each of ``secrets`` masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m[1]}:{MASK}@", text)
    return _KEYWORD_SECRET.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text) if "=" in text else text


def secrets_in_environment(url_variables: tuple[str, ...], key_variables: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """The secrets the environment holds: the passwords of the URLs in ``url_variables`` and in every
    variable whose name starts with ``prefix``, and the values of ``key_variables`` (API keys); longest first."""
    found: set[str] = set()
    for name, value in os.environ.items():
        if name in url_variables or name.startswith(prefix):
            found.update(url_secrets(value))
        elif name in key_variables:
            found.add(value)
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True))


class MaskingStream:
    """A text stream that masks secrets (:func:`mask_text`) in everything written to it, whoever
    writes it (smm, Hydra's ``--cfg``/``--info`` output, a library's log line)."""

    def __init__(self, stream, secrets: tuple[str, ...]) -> None:
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        self._stream.write(mask_text(text, self._secrets))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):  # flush, isatty, fileno, encoding, buffer, ...
        return getattr(self._stream, name)
