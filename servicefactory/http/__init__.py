"""The HTTP side: the builtin server, request framing, access control, TLS, and the client."""
