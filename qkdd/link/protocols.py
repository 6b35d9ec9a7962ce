"""The protocols the daemon's link engine runs, by the name `[[links]] protocol` gives: each one's frame
pipeline and the drivers whose devices yield its raw frames. A new protocol is one more entry here."""
from __future__ import annotations

from dataclasses import dataclass

from qkdd.hal.drivers import RAW_FRAME_DRIVERS
from qkdd.link.cv_pipeline import CvFramePipeline
from qkdd.link.e91_pipeline import E91FramePipeline
from qkdd.link.pipeline import FramePipeline


@dataclass(frozen=True)
class FrameProtocol:
    pipeline: type[FramePipeline]       # one frame at one end (qkdd.link.pipeline's interface)
    drivers: tuple[str, ...]            # drivers whose devices yield this protocol's raw frames
    needs_decoy: bool                   # Alice's pipeline takes her device's decoy settings


FRAME_PROTOCOLS: dict[str, FrameProtocol] = {
    "bb84": FrameProtocol(FramePipeline, drivers=RAW_FRAME_DRIVERS, needs_decoy=True),
    "e91": FrameProtocol(E91FramePipeline, drivers=("sim",), needs_decoy=False),
    "cvqkd": FrameProtocol(CvFramePipeline, drivers=("sim",), needs_decoy=False),     # GG02
}


def frame_protocol(name: str) -> FrameProtocol:
    try:
        return FRAME_PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"protocol {name!r} has no link engine (known: {', '.join(FRAME_PROTOCOLS)})") from None
