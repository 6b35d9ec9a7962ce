"""Hardware abstraction layer: the device interface (base.py) and its drivers (sim: physics; etsi014, serial,
sdk), yielding raw detection records or finished keys."""
