"""The HTTP/1.1 surface: h11 over trio (TLS) streams, with every limit owned here.

Handlers and the daemon use the names re-exported here: the contract (messages.py), Router
(router.py) and HTTPServer (server.py). connection.py serves one client, tls.py builds TLS contexts
and parses peer certificates, errors.py holds the server's own error responses.
"""
from .messages import (ClientCertMode, Handler, HTTPError, HTTPLimits, PeerCertificate, Request, Response,
                       TLSSettings)
from .router import Router
from .server import HTTPServer

__all__ = ["ClientCertMode", "Handler", "HTTPError", "HTTPLimits", "HTTPServer", "PeerCertificate", "Request",
           "Response", "Router", "TLSSettings"]
