"""Trusted-node relay network (HIP-0071 "Trusted Node Relay Architecture"): signed link-state announcements
flooded over the links' classical channels (linkstate.py), routes over the resulting topology (routing.py),
hop-by-hop XOR forwarding of keys to non-adjacent nodes (protocol.py) and its I/O side (service.py)."""
