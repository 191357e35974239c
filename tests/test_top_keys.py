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


def screen_of(top, width: int, height: int) -> list[str]:
    """The lines `top` draws on a `width` x `height` terminal (rich renders them, without colour)."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, height=height, color_system=None, legacy_windows=False)
    lines = console.render_lines(top.render(height, width), console.options.update_dimensions(width, height))
    return ["".join(segment.text for segment in line).rstrip() for line in lines]


def rows(count: int) -> list[dict]:
    return [{"name": f"S{n:02d}", "state": "running", "pid": 1000 + n, "memory": 16 << 20, "restarts": 0,
             "uptime": 5, "url": f"http://127.0.0.1:{40000 + n}"} for n in range(count)]


def test_more_rows_than_fit_scroll_so_that_the_selected_one_stays_on_screen_above_the_footer():
    from servicefactory.view.top import KEYS_HELP, Top

    top = Top(None, where="/state")  # the table alone: no sampler needed until a refresh
    top.rows = rows(30)
    top.selected = "S00"
    lines = screen_of(top, 100, 10)
    assert len(lines) == 10 and lines[-1] == KEYS_HELP
    assert lines[1].startswith("NAME") and lines[2].startswith("S00 ") and lines[8].startswith("S06 ")
    for _ in range(25):
        top.key("down")
    assert top.selected == "S25"
    lines = screen_of(top, 100, 10)
    assert lines[1].startswith("NAME") and lines[-1] == KEYS_HELP  # header and footer stay put
    assert lines[8].startswith("S25 ") and lines[2].startswith("S19 "), lines
    for _ in range(3):
        top.key("up")
    lines = screen_of(top, 100, 10)
    assert lines[2].startswith("S19 ") and lines[8].startswith("S25 "), lines  # moving within it: it stays
    for _ in range(4):
        top.key("k")
    lines = screen_of(top, 100, 10)
    assert lines[2].startswith("S18 ") and lines[8].startswith("S24 "), lines  # past its top: one row up


def test_a_narrow_terminal_cuts_lines_instead_of_wrapping_them():
    from servicefactory.view.top import Top

    top = Top(None, where="/a/very/long/state/directory/path/that/does/not/fit")
    top.rows = rows(3)
    top.selected = "S01"
    top.message = "S01 running (pid 1001, http://127.0.0.1:40001) and a long message after it"
    lines = screen_of(top, 40, 8)
    assert len(lines) == 8 and all(len(line) <= 40 for line in lines), lines
    assert [line.split()[0] for line in lines[2:5]] == ["S00", "S01", "S02"], lines  # one line per row
    assert lines[-1].startswith("up/down select"), lines
