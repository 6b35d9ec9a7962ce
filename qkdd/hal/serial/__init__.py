"""The serial driver: a device that streams its records over a tty (docs/serial-protocol.md).

    frames.py     the framing, sans-IO: encoders and the resynchronising FrameParser
    records.py    DETECTIONS chunks into RawFrames (sequence gaps drop the frame in assembly)
    device.py     SerialDevice: pyserial in a trio worker thread, reconnects after an unplug
    emulator.py   plays the simulator's frames on two real ptys (`qkdctl device serve --pty`)
"""
