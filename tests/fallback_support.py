"""The simulator's two knobs that stop key production on a live link, as the consumer fallback tests turn
them: Eve's intercept-resend attack and a fiber cut (60 dB of extra loss, only dark counts reach Bob), each
through alice's admin sim-control API (qkdd/api/sim_control.py). Either drives the QBER to about 50 %, so
the gate halts the link; turned off, keys flow again. A knob set through the API lives in alice's running
daemon only: `knob.on_in_config(text)` puts it into alice's `[links.sim]` table so a restarted alice comes
back with the link still cut."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str
    route: str               # POST /v1/links/{link_id}/sim/<route>
    on: dict
    off: dict
    sim_setting: str         # the same knob as a [links.sim] line

    def path(self, link_id: str) -> str:
        return f"/v1/links/{link_id}/sim/{self.route}"

    def on_in_config(self, text: str) -> str:
        """A daemon config `text` (alice's) with the knob on from the start."""
        assert "[links.sim]\n" in text
        return text.replace("[links.sim]\n", f"[links.sim]\n{self.sim_setting}\n", 1)


ATTACK = Knob("attack", "attack", {"attack": "intercept-resend:1"}, {"attack": "none"}, 'attack = "intercept-resend:1"')
FIBER_CUT = Knob("fiber-cut", "drift", {"extra_loss_db": 60}, {"extra_loss_db": 0}, "extra_loss_db = 60")
