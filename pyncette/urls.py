"""Connection URLs in logs and errors: every backend shows them through :func:`mask_url`."""

from __future__ import annotations

import urllib.parse

MASK = "***"
UNPARSEABLE = "<unparseable URL>"
_SECRET_PARAMETERS = frozenset({"password", "pass", "pwd", "secret"})


def mask_url(url: object) -> str:
    """``url`` as text with any password replaced by ``***``: the one in the user part
    (``scheme://user:***@host``) and the value of a ``password`` query parameter.

    Takes a string or anything whose ``str()`` is a URL (SQLAlchemy's ``URL`` is
    rendered with its password hidden first). Text that is not a URL at all is not
    shown, since it may be a secret pasted into the wrong place.
    """
    render = getattr(url, "render_as_string", None)
    text = render(hide_password=True) if callable(render) else str(url)
    try:
        parts = urllib.parse.urlsplit(text)
        password = parts.password
    except ValueError:
        return UNPARSEABLE
    if not parts.scheme:
        return UNPARSEABLE
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_PARAMETERS for key, _ in pairs):
            masked = [
                (key, MASK if key.lower() in _SECRET_PARAMETERS else value) for key, value in pairs
            ]
            query = urllib.parse.urlencode(masked, safe="*")
    if netloc == parts.netloc and query == parts.query:
        return text
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
