"""TLS for the control API: the server's context from a certificate and key, and the client's side.

Only a service or a call that uses TLS imports this module (and `ssl`, ~10 ms and OpenSSL): a plain
`servicefactory perform` never pays for it. The client always verifies the server's certificate
and its host name or IP address against a CA file (`ca_file=`, `--ca-file`,
$SERVICEFACTORY_CA_FILE) or, without one, the system's trusted CAs.
"""
from __future__ import annotations

import os
import socket
import ssl

from servicefactory.http.client import _Connection
from servicefactory.errors import InvalidData, ProtocolError, ServiceTimeout, StartupError

#: where a client finds the CA that signed the services' certificates, unless told otherwise
CA_FILE_ENV = "SERVICEFACTORY_CA_FILE"

_client_contexts: dict[str | None, ssl.SSLContext] = {}


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context serving `cert` (PEM, with its chain) with `key`; StartupError in one line if unusable."""
    for what, path in (("certificate", cert), ("key", key)):
        if not os.path.isfile(path):
            raise StartupError(f"TLS {what} file {path} does not exist or is not a file")
        if not os.access(path, os.R_OK):
            raise StartupError(f"TLS {what} file {path} is not readable")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 and up, the default ciphers
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise StartupError(f"TLS certificate {cert} and key {key} cannot be used: {exc.reason or exc}") from None
    except (OSError, ValueError) as exc:  # ValueError: a key that needs a password
        raise StartupError(f"TLS certificate {cert} and key {key} cannot be used: {exc}") from None
    return context


def exposed_key(key: str) -> str | None:
    """Why the private key is exposed to other users (readable by everyone), else None."""
    try:
        mode = os.stat(key).st_mode
    except OSError:
        return None
    if mode & 0o004:
        return f"TLS key {key} is readable by every user (mode {mode & 0o777:o}); run: chmod 600 {key}"
    return None


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: `ca_file` (else $SERVICEFACTORY_CA_FILE, else the system's CAs)."""
    ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
    context = _client_contexts.get(ca_file)
    if context is None:
        try:
            # check_hostname on, CERT_REQUIRED: the name (or IP) we connect to must be in the certificate
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidData(f"cannot use the CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
        _client_contexts[ca_file] = context
    return context


def verify_option(ca_file: str | None) -> str | bool:
    """What requests' `verify=` takes for the same choice: the CA file, or True (its own CAs)."""
    ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InvalidData(f"cannot use the CA file {ca_file}: no such file")
    return ca_file or True


def wrap(sock: socket.socket, host: str, name: str, where: str, ca_file: str | None) -> ssl.SSLSocket:
    """Wrap a connected socket and finish the handshake; ProtocolError in one line if it fails.

    ProtocolError (exit 8), not Unauthorized: the service did not refuse our credentials (it never
    saw them); the peer could not prove it is the service, so nothing was sent.
    """
    try:
        context = client_context(ca_file)
    except InvalidData:
        sock.close()
        raise
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ProtocolError(f"{name} at {where}: its TLS certificate is not trusted ({exc.verify_message}); "
                            f"nothing was sent. Give the CA that signed it with --ca-file or "
                            f"${CA_FILE_ENV}") from None
    except socket.timeout:
        sock.close()
        raise ServiceTimeout(f"{name} at {where}: the TLS handshake timed out; nothing was sent") from None
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
        raise ProtocolError(f"{name} at {where}: the TLS handshake failed ({reason}); is it serving TLS? "
                            f"Nothing was sent") from None


class TLSConnection(_Connection):
    """A keep-alive connection over TLS, with Python's socket timeouts.

    The plain connection's kernel timeouts (SO_RCVTIMEO) do not bound a blocking TLS socket: ssl
    retries a read that timed out in the kernel, forever. So every wait is bounded by settimeout().
    """

    __slots__ = ()

    def _limit(self, seconds: float) -> None:
        self.sock.settimeout(max(seconds, 0.001))

    def usable(self) -> bool:
        """Whether the idle connection is open with nothing unread (a close_notify counts as unread)."""
        if not self.open:
            return False
        self.sock.settimeout(0.0)  # the peek must not wait for readability as a timeout would
        return super().usable()

    def _send_watching(self, request: bytes, deadline: float) -> bool:
        # a peek would wait on a socket with a timeout: send it all; a 413 and a close are read after
        try:
            self._remaining(deadline)
            self.sock.sendall(request)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise BrokenPipeError("the TLS connection was closed while sending") from None
        return False

    def exchange(self, request: bytes, deadline: float, timeout: float) -> tuple[int, str, bytes]:
        """Send one request and read its answer, as over plain TCP."""
        try:
            return super().exchange(request, deadline, timeout)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):  # SO_RCVTIMEO/SO_SNDTIMEO ran out
            raise socket.timeout("timed out") from None
        except ssl.SSLEOFError:
            raise ConnectionResetError("the TLS connection was closed") from None
