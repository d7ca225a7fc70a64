"""What a mode does not need stays unimported: `--datapath none` must not pay for netlink or
bcc (bcc alone is ~70 MiB resident), nor a real node for the embedded emulator."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_imports_no_datapath_or_emulator_until_a_mode_asks() -> None:
    probe = (
        "import sys, agent.main; "
        "print(sorted(m for m in ('pyroute2', 'bcc', 'datapath.wiring', 'datapath.bpf', "
        "'agent.cloud.emulator', 'agent.kube', 'rich') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
