"""The protocols the daemon's link engine runs, by the name `[[links]] protocol` gives: each one's frame
pipeline and the drivers whose devices yield its raw frames. A new protocol is one more entry here.
A pipeline's module is imported when a link first asks for it: a daemon loads only the protocols it runs
(its start-up, and so its restart after a crash, is shorter by the others' imports)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qkdd.hal.drivers import RAW_FRAME_DRIVERS

if TYPE_CHECKING:
    from qkdd.link.pipeline import FramePipeline


@dataclass(frozen=True)
class FrameProtocol:
    pipeline_class: str                 # "module:class" of its frame pipeline (qkdd.link.pipeline's interface)
    drivers: tuple[str, ...]            # drivers whose devices yield this protocol's raw frames
    needs_decoy: bool                   # Alice's pipeline takes her device's decoy settings

    @property
    def pipeline(self) -> type[FramePipeline]:
        """The frame pipeline class: one frame at one end."""
        module, name = self.pipeline_class.split(":")
        return getattr(importlib.import_module(module), name)


FRAME_PROTOCOLS: dict[str, FrameProtocol] = {
    "bb84": FrameProtocol("qkdd.link.pipeline:FramePipeline", drivers=RAW_FRAME_DRIVERS, needs_decoy=True),
    "e91": FrameProtocol("qkdd.link.e91_pipeline:E91FramePipeline", drivers=("sim",), needs_decoy=False),
    "cvqkd": FrameProtocol("qkdd.link.cv_pipeline:CvFramePipeline", drivers=("sim",), needs_decoy=False),  # GG02
}


def frame_protocol(name: str) -> FrameProtocol:
    try:
        return FRAME_PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"protocol {name!r} has no link engine (known: {', '.join(FRAME_PROTOCOLS)})") from None
