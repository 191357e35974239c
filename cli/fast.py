"""The console script's entry point, and `servicefactory perform` on a fast path without click.

`perform` is typed by people and run by scripts in loops, so its cold start counts: importing
click costs more than the call itself. `main` therefore parses a `perform` command line here, with
the standard library only, and hands every other command line to the click group in cli/main.py.

The two parsers cannot disagree. This one accepts only command lines it fully understands, and
means by them what click means; anything else (`--help`, a missing argument, an unknown option, a
value out of range) goes to click, which prints its usual help or error and exits 2. The values
are checked by the same functions (`parse_seconds`, `parse_size`) on both paths, and both run the
same `perform` below. tests/test_imports.py keeps the list of modules this path may import.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs this path more than it saves: its names are for type checkers only
if TYPE_CHECKING:
    from typing import NoReturn

#: seconds `perform` waits for an answer, and the most it may be told to wait
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 86400.0
#: seconds `perform --wait` waits for a service to be ready, when no number follows it
DEFAULT_WAIT = 30.0
MAX_WAIT = 86400.0
#: bytes of DATA `perform` reads, from stdin too: no more is read, so memory stays bounded.
#: It is the service's own default body limit (`endpoint(max_body=...)`).
DEFAULT_MAX_BODY = 1 << 20

_USAGE_EXIT = 2
_INTERRUPTED_EXIT = 130
_BROKEN_PIPE_EXIT = 141


def main() -> None:
    """Console-script entry point: `perform` here when its command line is plain, else the click group."""
    arguments = sys.argv[1:]
    if arguments[:1] == ["perform"]:
        options = parse_perform(arguments[1:])
        if options is not None:
            try:
                perform(**options)
            except KeyboardInterrupt:
                sys.stderr.write("\ninterrupted\n")  # what the click path prints for Ctrl+C
                sys.exit(_INTERRUPTED_EXIT)
            return
    from servicefactory.cli.main import main as click_main
    click_main()


# -- the command line ------------------------------------------------------------------------

def parse_seconds(text: str, upper: float) -> float:
    """`text` as seconds from 0.001 to `upper`; ValueError (with the reason) otherwise: nan, inf, 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds.") from None
    if not 0.001 <= value <= upper:  # false for nan too
        raise ValueError(f"{text!r} is not a number of seconds from 0.001 to {upper:g}.")
    return value


def parse_size(text: str) -> int:
    """`text` as a positive number of bytes; ValueError otherwise."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive number of bytes.")
    return int(text)


def parse_instance(text: str) -> int:
    """`text` as an instance number (1, 2, ...); ValueError otherwise."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 999999 or text[0] == "0":
        raise ValueError(f"{text!r} is not an instance number (1, 2, ...).")
    return int(text)


def parse_file(text: str) -> str:
    """`text` as the path of an existing file (what click's Path(exists=True, dir_okay=False) takes)."""
    import os

    if not text or not os.path.isfile(text):
        raise ValueError(f"{text!r} is not an existing file.")
    return text


# perform's options: name -> (keyword, parser of the value, value when the option is given without one)
_OPTIONS = {
    "--timeout": ("timeout", lambda text: parse_seconds(text, MAX_TIMEOUT), None),
    "--wait": ("wait", lambda text: parse_seconds(text, MAX_WAIT), DEFAULT_WAIT),
    "--max-body": ("max_body", parse_size, None),
    "--ca-file": ("ca_file", parse_file, None),
    "--instance": ("instance", parse_instance, None),
    "--registry": ("registry", lambda text: text.strip() or _refuse(text), None),
}


def _refuse(text: str) -> str:
    raise ValueError(f"{text!r} is not a registry.")


def parse_perform(arguments: list[str]) -> dict | None:
    """perform's arguments as keywords of `perform`, or None for anything click should answer.

    As click does: options may come between the arguments, `--option=value` is one argument,
    the last of a repeated option wins, `--` ends the options, `-` alone is an argument, and
    `--wait` takes the next argument as its value unless there is none or it looks like an option.
    """
    positional: list[str] = []
    options: dict = {"timeout": DEFAULT_TIMEOUT, "wait": None, "max_body": DEFAULT_MAX_BODY, "ca_file": None,
                     "instance": None}  # and "registry", only if given: click's context does not show it
    remaining = list(arguments)
    while remaining:
        argument = remaining.pop(0)
        if argument == "--":
            positional.extend(remaining)
            break
        if argument[:1] != "-" or argument == "-":
            positional.append(argument)
            continue
        name, has_value, value = argument.partition("=")
        if name not in _OPTIONS:
            return None  # help, a short option, an unknown one: click prints what it says about it
        keyword, parse, value_if_omitted = _OPTIONS[name]
        if not has_value:
            if remaining and not (value_if_omitted is not None and remaining[0][:1] == "-"
                                  and len(remaining[0]) > 1):
                value = remaining.pop(0)
            elif value_if_omitted is not None:
                options[keyword] = value_if_omitted
                continue
            else:
                return None  # an option missing its value
        try:
            options[keyword] = parse(value)
        except ValueError:
            return None
    if not 2 <= len(positional) <= 3:
        return None
    name, action, data = (positional + [None])[:3]
    return dict(options, name=name, action=action, data=data)


# -- the command -----------------------------------------------------------------------------

def perform(name: str, action: str, data: str | None, timeout: float = DEFAULT_TIMEOUT,
            wait: float | None = None, max_body: int = DEFAULT_MAX_BODY, ca_file: str | None = None,
            instance: int | None = None, registry: str | None = None) -> None:
    """Call ACTION on NAME (instance `instance` of it, if given) with the JSON text DATA ('-': stdin)
    and print the JSON result, or exit with an error; `registry` stands for $SERVICEFACTORY_REGISTRY."""
    import json

    from servicefactory import ServiceFactoryError

    if registry is not None:
        import os
        os.environ["SERVICEFACTORY_REGISTRY"] = registry

    if instance is not None:
        if "/" in name:
            _fail(f"{name} names an instance already; drop --instance", _USAGE_EXIT)
        name = f"{name}/{instance}"

    value = None if data is None else _decode_data(data, max_body)
    try:
        result = _call(name, action, value, timeout, wait, ca_file)
    except ServiceFactoryError as exc:
        _fail(str(exc), exc.exit_code)
    try:
        text = json.dumps(result, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # the service answered a lone surrogate: \u-escaped it is still valid JSON
        text = json.dumps(result).encode()
    _print(text + b"\n")


def _decode_data(data: str, max_body: int) -> object:
    import json

    if data == "-":
        raw = _read_stdin(max_body)
    else:
        try:
            raw = data.encode()
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach us as lone surrogates
            _fail("DATA is not valid UTF-8", _USAGE_EXIT)
    if len(raw) > max_body:
        _fail(f"DATA is over the limit of {max_body} bytes (--max-body; the service has a limit of its own)",
              _USAGE_EXIT)
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        _fail(f"DATA is not valid UTF-8 ({exc.reason} at byte {exc.start})", _USAGE_EXIT)
    if not text.strip():
        _fail("DATA is empty; give a JSON value, e.g. '\"hello\"', 42 or '{\"a\": 1}'", _USAGE_EXIT)
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        _fail("DATA is nested too deeply", _USAGE_EXIT)
    except ValueError as exc:
        _fail(f"DATA is not valid JSON ({exc}); strings need quotes: '\"hello\"'", _USAGE_EXIT)
    if "\\ud" in text or "\\uD" in text:  # only a \u escape can make a lone surrogate here
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            _fail(f"DATA has a lone surrogate ({exc.object[exc.start]!r}), which is not Unicode text "
                  f"and cannot be sent as JSON", _USAGE_EXIT)
    return value


def _read_stdin(max_body: int) -> bytes:
    # one byte past the limit tells "too long" without reading (or holding) any more of the input
    if sys.stdin is None:
        _fail("DATA is '-' but there is no standard input to read it from", _USAGE_EXIT)
    stream = sys.stdin.buffer
    chunks = []
    size = 0
    while size <= max_body:
        chunk = stream.read(max_body + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# what a supervisor's states mean to a caller who could not reach the service
_NOT_READY = {"starting": "starting", "backoff": "waiting to be restarted", "stopping": "stopping"}


def _call(name: str, action: str, value: object, timeout: float, wait: float | None,
          ca_file: str | None = None) -> object:
    """The call; while the service is not ready, wait up to `wait` seconds, else say why it is not."""
    import time

    from servicefactory import ServiceNotRunning

    from servicefactory.http import client

    client.follow_registries = False  # one call, then exit: a watch would cost more than it saves
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            return client.perform(name, action, value, timeout=timeout, ca_file=ca_file)
        except ServiceNotRunning as exc:  # nothing was sent, or nothing was run: trying again is safe
            state = _state(name)
            settled = state in ("failed", "running")  # left failed, or running but not callable: waiting is vain
            if deadline is None or settled or time.monotonic() >= deadline:
                if state == "failed":
                    raise ServiceNotRunning(f"{name} failed and is not being restarted "
                                            f"(servicefactory logs {name}; servicefactory restart {name})") from None
                if state in _NOT_READY:
                    how = (f"still {_NOT_READY[state]} after {wait:g} s" if wait is not None else
                           f"{_NOT_READY[state]}, not ready yet (add --wait to wait for it)")
                    raise ServiceNotRunning(f"{name} is {how}") from None
                raise exc from None
        time.sleep(0.05)


def _state(name: str) -> str:
    """What the registry says of `name` (starting, backoff, failed, ...), for a call that could not be made."""
    from servicefactory import ServiceFactoryError
    from servicefactory.registry.backends import default_registry
    from servicefactory.registry.base import state_of

    try:
        state, _ = state_of(default_registry(), name)
    except (ServiceFactoryError, OSError):
        return "unknown"
    return state


def _print(data: bytes) -> None:
    if sys.stdout is None:
        return  # started with stdout closed (`>&-`): the call was made, there is nowhere to print
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`| head`): exit as a shell expects, and keep Python from
        # complaining once more when it flushes stdout at exit
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(_BROKEN_PIPE_EXIT)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
