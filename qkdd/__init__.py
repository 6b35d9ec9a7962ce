"""qkdd: the quantum key distribution agent (one end of a QKD link: device, peer, key store, delivery)."""

__version__ = "0.1.0"
