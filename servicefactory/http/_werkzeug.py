"""werkzeug's threaded server behind the same seam as ours: `endpoint(server="werkzeug")`.

Our own server is the default (faster, and a service that never imports werkzeug saves ~15 MiB);
this one is for those who want the well-known server, and it proves the seam holds.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable


class WerkzeugServer:
    """Serve a WSGI app with werkzeug.serving on an already bound socket."""

    def __init__(self, app: Callable, sock: socket.socket) -> None:
        from werkzeug.serving import make_server

        self.host, self.port = sock.getsockname()[:2]
        self._socket = sock
        sock.setblocking(True)
        # pass the bound socket: werkzeug would otherwise print and sys.exit() on a taken port
        self._server = make_server(self.host, self.port, app, threaded=True, fd=sock.fileno())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use to reach this server."""
        from servicefactory.http.server import format_url
        return format_url(self.host, self.port)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="servicefactory-werkzeug",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (from another thread than a request's) and close the sockets."""
        if self._thread is None:
            return
        self._server.shutdown()
        self._thread.join(timeout)
        self._thread = None
        self._server.server_close()
        self._socket.close()
