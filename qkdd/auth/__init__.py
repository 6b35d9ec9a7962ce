"""Information-theoretic (Wegman-Carter) authentication of the classical channel: the hash family and the
frame transcript's tags (wegman_carter.py), the authentication pool (pool.py) and its pre-shared seed
(secret.py). See docs/auth-audit.md."""
