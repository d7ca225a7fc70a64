"""Agent RSS in BPF mode with the compile in a short-lived child, against the agent that
compiled with bcc itself (LLVM stays mapped), and against kernel mode, in one run.

Each case starts the real agent (`python -m agent.main --cloud sim --host-netns NAME`) in a
fresh sandbox, waits for its "ready" line, reads VmRSS and VmHWM from /proc, and stops it.
The in-process compile is this tree (HEAD, exported to a temporary directory) with
datapath/bpf.py as it was at git commit BEFORE, the last one before the loader child: the same
agent, compiling with bcc itself. Needs root, bcc, git.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEFORE = "840afa0"  # datapath: pull headers only when the L4 header is not linear


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def agent_rss(code: Path, mode: str) -> dict[str, Any]:
    """Start the agent from `code` in `mode`; its RSS and peak RSS (MiB) once ready."""
    name = f"vpmem{os.getpid() % 100000}"
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "agent.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VPCNI_", "AWS_"))}
        env.update(PYTHONPATH=str(code), DISABLE_INTROSPECTION="true", DISABLE_METRICS="true")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.main", "--cloud", "sim", "--datapath", mode,
                 "--host-netns", name, "--socket", f"{tmp}/a.sock", "--state-dir", tmp],
                cwd=code, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while '"msg":"ready"' not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            time.sleep(1.0)  # let start-up garbage settle
            rss = _status_kib(proc.pid, "VmRSS") / 1024
            hwm = _status_kib(proc.pid, "VmHWM") / 1024
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            subprocess.run([sys.executable, "-m", "agent.ctl", "sandbox", "down", name],
                           cwd=REPO, capture_output=True, check=False)  # fmt: skip
    return {"rss_mib": round(rss, 1), "peak_mib": round(hwm, 1)}


def main() -> list[dict[str, Any]]:
    """Rows: BPF with the loader child, BPF compiling in the agent (BEFORE), kernel mode."""
    with tempfile.TemporaryDirectory() as old:
        git = ["git", "-C", str(REPO)]
        archive = subprocess.run([*git, "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        in_agent = subprocess.run([*git, "show", f"{BEFORE}:datapath/bpf.py"],
                                  capture_output=True, check=True).stdout  # fmt: skip
        (Path(old) / "datapath" / "bpf.py").write_bytes(in_agent)
        rows = [
            {"agent": "bpf, compile in a child (now)", **agent_rss(REPO, "bpf")},
            {
                "agent": f"bpf, compile in the agent (bpf.py of {BEFORE})",
                **agent_rss(Path(old), "bpf"),
            },
            {"agent": "kernel", **agent_rss(REPO, "kernel")},
        ]
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
