"""Consumers of QKD keys: WireGuard pre-shared-key rotation (wireguard.py) and, later, the KMS push."""
