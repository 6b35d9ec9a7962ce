"""What a frame pipeline (qkdd.link.pipeline, e91_pipeline, cv_pipeline) asks its caller to do, and the
outcome it reports: plain data, shared by every protocol's pipeline and the link engine."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Send:
    record: bytes


@dataclass(frozen=True)
class StorePending:
    frame_id: int
    keys: list[tuple[str, bytes]] = field(repr=False)
    allocatable: list[bool] = field(repr=False)
    expires_at: float                   # the same at both ends: Alice's KEYS announced it
    qber: float | None = None           # the frame's error rate after Cascade, the same at both ends


@dataclass(frozen=True)
class Commit:
    frame_id: int


@dataclass(frozen=True)
class Discard:
    frame_id: int


@dataclass
class FrameOutcome:
    """What one frame gave at this end (numbers only, never key material)."""

    frame_id: int
    role: str
    detections: int = 0
    sifted_bits: int = 0                # both bases
    sifted_key_bits: int = 0            # X basis, the reconciled length
    pulses_sent: int = 0
    qber_estimate: float | None = None  # Z basis, all intensities
    qber: float | None = None           # exact X error rate after Cascade
    disclosed_bits: int = 0
    codewords_given_up: int = 0         # LDPC codewords beyond every rescue: key bits zeroed, counted as disclosed
    key_length_bits: int = 0            # Lim's bound with the actual leakage
    secret_bits: int = 0                # stored (whole keys)
    keys: int = 0
    aborted: str | None = None
    abort_code: int | None = None
    aborted_by_peer: bool = False
    gate_refused: bool = False
    auth_bits_consumed: int = 0         # authentication pool bits this end spent on the frame's tags
    auth_bits_refilled: int = 0         # distilled bits put back into the pool (before any key)
    eps_auth: float = 0.0               # probability the transcript authentication is forged (frame_epsilon)
    eps_total: float = 0.0              # with auth its/both: the frame's keys' composable epsilon (see _split)
    chsh_s: float | None = None         # E91: the frame's CHSH value S from its test rounds (e91_pipeline)


@dataclass(frozen=True)
class Finished:
    outcome: FrameOutcome


Action = Send | StorePending | Commit | Discard | Finished
