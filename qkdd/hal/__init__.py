"""Device abstraction layer: drivers that yield raw detection records or finished keys (sim: physics)."""
