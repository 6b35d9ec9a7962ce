"""ETSI GS QKD 004 key streams: the wire format (wire.py), the streams and their QoS (streams.py), the
chunks agreed with the other end of a link (chunks.py) and the TLS listener (server.py)."""
