"""How `top` reads keys from the terminal (servicefactory.view._terminal.parse): what terminals
send for arrows, Enter and Esc, in both cursor modes; the tmux tests drive the rest."""
from __future__ import annotations

from servicefactory.view._terminal import parse


def test_letters_arrows_in_both_cursor_modes_enter_and_backspace():
    assert parse(b"jkq") == ["j", "k", "q"]
    assert parse(b"\x1b[A\x1b[B\x1bOA\x1bOB\x1b[D") == ["up", "down", "up", "down", "left"]
    assert parse(b"\r\n\x7f\x08") == ["enter", "enter", "backspace", "backspace"]


def test_a_lone_escape_is_the_escape_key_and_a_sequence_is_never_read_as_letters():
    assert parse(b"\x1b") == ["escape"]
    assert parse(b"\x1b\x1b") == ["escape", "escape"]
    # F5 (ESC [ 1 5 ~) and a modified arrow (ESC [ 1 ; 5 A) are unknown keys, not `1`, `5`, `q`...
    assert parse(b"\x1b[15~q\x1b[1;5A") == ["unknown", "q", "unknown"]


def test_bytes_that_are_not_ascii_or_are_control_characters_are_dropped():
    assert parse("é".encode() + b"\x00\x01s") == ["s"]
    assert parse(b"") == []
