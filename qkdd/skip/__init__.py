"""SKIP, the Secure Key Integration Protocol (IETF draft-cisco-skip-02, now draft-singh-skip) through which
routers fetch keys: the TLS-PSK context (psk.py), the keys agreed with the other end of a link (keys.py)
and the HTTP routes (api.py)."""
