"""What may name an action: shared by the server's router and the client, which checks before sending."""
from __future__ import annotations

import re

# letters, digits, '_' and '-', in dot-separated words: no '..', no '/', no NUL, no unicode, no CR/LF
_ACTION_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def valid_action_name(name: object) -> bool:
    """Whether `name` may name an action (ASCII words joined by single dots)."""
    return isinstance(name, str) and bool(_ACTION_NAME.match(name))
