"""Hardware abstraction layer: the device interface (base.py) and its drivers (sim, etsi014, serial, sdk)."""
