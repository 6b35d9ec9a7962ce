"""Benchmarks: `python -m bench.NAME`, each printing one JSON object per configuration."""
