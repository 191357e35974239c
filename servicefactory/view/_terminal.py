"""The terminal under `top`: keys read from stdin in cbreak mode (no echo, key by key; Ctrl+C still
a signal), and the terminal's modes put back exactly as they were, however `top` ends.

rich draws but reads no keys, so this is the part curses did for us: a few escape sequences
(arrows in both the normal and the application cursor mode, which tmux and xterm send) and a lone
Esc. A terminal writes a key's sequence in one go, so a read that holds only ESC is the Esc key:
no delay to wait out, where curses waits for one.
"""
from __future__ import annotations

import os
import select
import termios
import tty
from typing import Any

#: escape sequences of the keys `top` knows, by name; any other sequence is "unknown"
SEQUENCES = {
    b"\x1b[A": "up", b"\x1bOA": "up", b"\x1b[B": "down", b"\x1bOB": "down",
    b"\x1b[C": "right", b"\x1bOC": "right", b"\x1b[D": "left", b"\x1bOD": "left",
    b"\x1bOM": "enter",  # Enter on the keypad in application mode
}
#: single bytes with a name of their own
BYTES = {0x1b: "escape", 0x0d: "enter", 0x0a: "enter", 0x7f: "backspace", 0x08: "backspace"}


def parse(data: bytes) -> list[str]:
    """The keys in `data` as read from the terminal: names (`up`, `escape`, `enter`, ...) or the
    character itself (`q`, `j`); bytes that are not ASCII are dropped (no key of ours needs them)."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x1b and i + 1 < len(data) and data[i + 1] in b"[O":
            end = i + 2
            while end < len(data) and not 0x40 <= data[end] <= 0x7e:  # CSI parameters, up to a final byte
                end += 1
            keys.append(SEQUENCES.get(bytes(data[i:end + 1]), "unknown"))
            i = end + 1
            continue
        if byte in BYTES:
            keys.append(BYTES[byte])
        elif 0x20 <= byte < 0x7f:
            keys.append(chr(byte))
        i += 1
    return keys


class Keys:
    """stdin in cbreak mode while in a `with` block; `read(timeout)` returns the keys typed meanwhile."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: Any = None
        self.closed = False  # the terminal went away (a hangup): no key will ever come

    def __enter__(self) -> "Keys":
        self.enter()
        return self

    def enter(self) -> None:
        """Save the terminal's modes and switch to cbreak (again after a suspension)."""
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)

    def __exit__(self, *_: Any) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the terminal's modes back as they were (a terminal already gone cannot be helped)."""
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except (termios.error, OSError):
                pass
            self.saved = None

    def read(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds for input; the keys it holds (none on a timeout or a signal)."""
        if self.closed:
            return []
        try:
            readable, _, _ = select.select([self.fd], [], [], timeout)
            if not readable:
                return []
            data = os.read(self.fd, 1024)
        except InterruptedError:
            return []
        except OSError:  # EIO: the terminal hung up
            data = b""
        if not data:
            self.closed = True
            return []
        return parse(data)
