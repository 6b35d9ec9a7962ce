"""Consumers of QKD keys: one rotation with one fallback policy (rotation.py) feeding WireGuard PSKs
(wireguard.py), a KMS (kms.py, HIP-0027) and strongSwan IKEv2 PPKs (ipsec.py), optionally hybrid (hybrid.py)."""
