"""The supervisor-child-CLI protocol: every message survives its own encode/decode, and nothing a
child writes on its pipe (garbage, wrong types) can pass for a message it is not."""
from __future__ import annotations

import json

import pytest

from servicefactory.supervise import _protocol
from servicefactory.supervise._protocol import (Beat, Ready, Reloaded, StartFailed, StartupReport, Stopping,
                                                StopReason, Unhealthy, decode_child, to_line)


@pytest.mark.parametrize("message", [
    Ready(name="echo", pid=12, url="http://127.0.0.1:5", host="127.0.0.1", port=5),
    Ready(name="echo", pid=12, url="https://127.0.0.1:5", host="127.0.0.1", port=5, tls=True),
    Ready(),
    Ready(name="echo", reload=True),
    Beat(),
    Reloaded(),
    Reloaded(ok=False, error="ValueError: bad config"),
    StartFailed(error="port in use", type="StartupError"),
    Unhealthy(errors=3, error="ValueError: x"),
    Stopping(reason=StopReason.ACTION),
    Stopping(reason=StopReason.SIGNAL, detail="SIGTERM"),
])
def test_child_messages_round_trip(message):
    line = to_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_child(line.rstrip(b"\n")) == message


@pytest.mark.parametrize("line", [b"", b"garbage", b"[1, 2]", b'"ready"', b"{}", b'{"ready": "yes"}',
                                  b'{"unhealthy": 0}'])
def test_anything_else_on_the_child_pipe_is_no_message(line):
    assert decode_child(line) is None


def test_an_unknown_stop_reason_is_kept_but_is_not_the_users():
    """An old child's free text ("shutdown action") or a made-up reason never counts as the user's stop."""
    for text in ("shutdown action", "stop()", "SIGTERM", "action "):
        message = decode_child(json.dumps({"stopping": text}).encode())
        assert isinstance(message, Stopping) and message.reason is None


def test_only_the_shutdown_action_is_a_users_stop():
    assert [reason for reason in StopReason if reason.by_user] == [StopReason.ACTION]


def test_a_ready_message_with_a_malformed_port_carries_no_port():
    message = decode_child(b'{"ready": true, "host": "127.0.0.1", "port": "80; rm"}')
    assert message == Ready(host="127.0.0.1")
    assert decode_child(b'{"ready": true, "port": true, "tls": "yes"}') == Ready()


@pytest.mark.parametrize("report", [
    StartupReport(ready=True, supervisor="_supervisor-9", pid=9,
                  services=[{"name": "a", "pid": 10, "url": None, "state": "running", "ever_ready": True}]),
    StartupReport(ready=False, service="a", error="exited with code 3", output=["boom"], exit_code=3),
    StartupReport(ready=False, error="a is already running", type="AlreadyRunning", exit_code=3),
])
def test_startup_report_round_trips(report):
    assert StartupReport.decode(to_line(report)) == report


@pytest.mark.parametrize("line", [b"", b"\n", b"{", b"[]", b"{}"])
def test_a_supervisor_that_said_nothing_readable_sent_no_report(line):
    assert StartupReport.decode(line) is None


def test_every_environment_variable_is_named_here_once():
    names = [value for key, value in vars(_protocol).items() if key.endswith("_ENV")]
    assert len(names) == len(set(names)) == 8
    assert all(name.startswith("SERVICEFACTORY_") for name in names)
