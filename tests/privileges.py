"""Whether this run may create netns/veths (root) and compile BPF (bcc + kernel headers)."""

from __future__ import annotations

import os
import shutil

import pytest

ROOT = os.geteuid() == 0


def _bcc_reason() -> str | None:
    if not ROOT:
        return "needs root"
    from datapath.bpf import Programs, pin_dir

    try:
        Programs("vpcni-probe")
    except Exception as e:  # bcc raises bare Exception when it cannot compile
        return f"bcc cannot compile here: {e}"
    finally:
        shutil.rmtree(pin_dir("vpcni-probe"), ignore_errors=True)
    return None


BCC_REASON = _bcc_reason()
needs_root = pytest.mark.skipif(not ROOT, reason="needs root for netns, veth, tc and bpf")
needs_bcc = pytest.mark.skipif(BCC_REASON is not None, reason=BCC_REASON or "")
