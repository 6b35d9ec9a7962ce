"""What `qkdd run` imports before it serves: no test-only module (pytest came in through trio.testing) and
none of the subsystems a configuration may leave out (relay, consumers, CV-QKD and E91, the vendor KME
client with httpx); their modules load where a configuration uses them. Each import is start-up time, and
after kill -9 the restarted daemon serves only once it is done (issue 24: service back within 5 s)."""
from __future__ import annotations

import subprocess
import sys

NOT_AT_START_UP = ("pytest", "_pytest", "trio.testing", "httpx", "qkdd.relay", "qkdd.consumers.rotation",
                   "qkdd.consumers.wireguard", "qkdd.hal.sim.cv_device", "qkdd.hal.sim.cv_channel",
                   "qkdd.link.cv_pipeline", "qkdd.link.e91_pipeline", "qkdd.link.key_relay")


def test_the_daemon_imports_no_test_module_and_no_subsystem_it_may_not_use():
    code = "import sys, qkdd.cli, qkdd.daemon, qkdd.logs; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "qkdd.daemon" in loaded and "qkdd.link.engine" in loaded
    early = sorted(name for name in loaded if any(name == prefix or name.startswith(prefix + ".")
                                                 for prefix in NOT_AT_START_UP))
    assert early == [], early
