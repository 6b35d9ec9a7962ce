"""The HTTP/1.1 surface: h11 over trio (TLS) streams, with every limit owned here.

Public names: Request, Response, HTTPError, PeerCertificate, HTTPLimits, TLSSettings (messages.py),
Router (router.py) and serve (server.py).
"""
