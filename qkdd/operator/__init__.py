"""`qkdctl status | links | keys | health | watch`: an operator's view of a running daemon, read from its own
HTTP routes (client.py), gathered into one snapshot (snapshot.py) and printed as tables or JSON (tables.py)."""
