"""The HTTP server sits behind a seam: the same service and client work on werkzeug's server too."""
from __future__ import annotations

import http.client
import socket

import pytest

from servicefactory import AddressInUse, Service, ServiceNotRunning, UnknownAction
from servicefactory.testing import running

from support import wait_until


@Service.API.endpoint(port=0, server="werkzeug", max_body=1024)
class OnWerkzeug(Service.base):
    def loop(self):
        self.sleep(0.05)

    @Service.API.handle("echo")
    def echo(self, data):
        return data


def _post(address, path, body, content_type="application/json"):
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_service_on_werkzeugs_server_answers_perform_and_the_contracts_status_codes():
    with running(OnWerkzeug()) as service:
        assert OnWerkzeug.perform("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert OnWerkzeug.perform("echo", 0) == 0
        with pytest.raises(UnknownAction):
            OnWerkzeug.perform("nope")
        assert _post(service.address, "/echo", b"{bad")[0] == 400
        assert _post(service.address, "/echo", b'"' + b"x" * 2000 + b'"')[0] == 413
        assert _post(service.address, "/echo", b"a=1", "application/x-www-form-urlencoded")[0] == 415
    with pytest.raises(ServiceNotRunning):
        OnWerkzeug.perform("echo", 1, timeout=1)


def test_the_shutdown_action_stops_a_service_on_werkzeugs_server():
    service = OnWerkzeug()
    with running(service):
        assert OnWerkzeug.perform("shutdown") is None
        # werkzeug closes the response (our cue to stop) just after sending it
        wait_until(lambda: service._servicefactory_runtime is None or service.stopping, timeout=5,
                   message="the service to stop")


def test_a_taken_port_raises_address_in_use_on_werkzeugs_server_too():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AddressInUse, match=str(port)):
            OnWerkzeug().run(port=port)


def test_the_builtin_server_releases_its_port_when_stopped_even_if_never_started():
    from servicefactory.http.server import Server, bind

    server = Server(lambda environ, start_response: [], bind("127.0.0.1", 0))
    port = server.port
    server.stop(1)
    with socket.socket() as again:  # the port is free again: the listening socket was closed
        again.bind(("127.0.0.1", port))
