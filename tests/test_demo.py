"""`make run`, the README's first command: the demo node runs end to end and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.agent_harness import REPO, built_plugin


def test_make_run_demo_adds_pods_and_pings() -> None:
    built_plugin()  # the demo execs build/vpcni, as `make run` builds it first
    done = subprocess.run(
        [sys.executable, "-m", "agent.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert out.count(": exit 0 in") == 8, out  # 4 ADDs and 4 DELs through the plugin
    assert "vpcni-ctl enis" in out and "vpcni-ctl pods" in out and "vpcni-ctl pool" in out
    if os.geteuid() == 0:  # pods are wired only as root; IPAM alone otherwise
        assert "ping pod1 (" in out and "FAILED" not in out, out
