"""Post-processing of sifted keys: sans-IO protocol objects (reconciliation, verification, amplification)."""
