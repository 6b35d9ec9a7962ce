"""DETECTIONS chunks of one device into RawFrames: chunks of a frame arrive in order with consecutive
sequence numbers; a gap (a frame lost to a CRC error, garbage, an unplug) drops the frame in assembly,
which the link engine then never pairs, so no key comes from incomplete records."""
from __future__ import annotations

import numpy as np

from qkdd.hal.base import AliceRecords, BobDetections, RawFrame
from qkdd.hal.serial.frames import DetectionsChunk


class FrameAssembler:
    def __init__(self, role: str, max_records: int) -> None:
        self.role = role
        self.max_records = max_records
        self.frames_dropped = 0
        self.last_drop: str = ""
        self._frame_id: int | None = None
        self._chunks: list[DetectionsChunk] = []
        self._records = 0
        self._headless_frame_id: int | None = None

    def lost(self, reason: str) -> None:
        """Data went missing: drop the frame in assembly, if any."""
        if self._frame_id is not None:
            self.frames_dropped += 1
            self.last_drop = f"frame {self._frame_id} dropped: {reason}"
        self._frame_id, self._chunks, self._records = None, [], 0

    def add(self, chunk: DetectionsChunk) -> RawFrame | None:
        """The RawFrame this chunk completes, else None."""
        if self._frame_id is not None and (chunk.first or chunk.frame_id != self._frame_id):
            self.lost(f"frame {chunk.frame_id} began before the last chunk of frame {self._frame_id}")
        if self._frame_id is None and not chunk.first:
            if chunk.frame_id != self._headless_frame_id:      # count each headless frame once
                self.frames_dropped += 1
                self.last_drop = f"frame {chunk.frame_id} dropped: its first chunk was not received"
                self._headless_frame_id = chunk.frame_id
            return None
        self._frame_id = chunk.frame_id
        self._chunks.append(chunk)
        self._records += len(chunk.records)
        if self._records > self.max_records:
            self.lost(f"more than {self.max_records} records")
            return None
        if not chunk.last:
            return None
        records = np.concatenate([c.records for c in self._chunks]) if len(self._chunks) > 1 else chunk.records
        self._frame_id, self._chunks, self._records = None, [], 0
        slots = np.ascontiguousarray(records["slot"])
        if slots.size > 1 and not bool(np.all(slots[1:] > slots[:-1])):
            self.frames_dropped += 1
            self.last_drop = f"frame {chunk.frame_id} dropped: slot numbers not strictly increasing"
            return None
        bases = np.ascontiguousarray(records["basis"])
        bits = np.ascontiguousarray(records["bit"])
        if self.role == "alice":
            return RawFrame(chunk.frame_id, chunk.slot_count,
                            alice=AliceRecords(slots=slots, bits=bits, bases=bases,
                                               intensities=np.ascontiguousarray(records["intensity"])),
                            pulses_per_intensity=chunk.pulses_per_intensity)
        return RawFrame(chunk.frame_id, chunk.slot_count, bob=BobDetections(slots=slots, bases=bases, outcomes=bits))
