"""The audit trail of key lifecycle events (ETSI GS QKD 016 audit): an append-only, hash-chained log whose
head the node signs with its ML-DSA-65 identity (trail.py), and its verification (verify.py,
`qkdctl audit verify`)."""
