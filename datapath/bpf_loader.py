"""`python -m datapath.bpf_loader HOST_NETNS MAX_ENDPOINTS`: compile the tc programs with bcc,
load them (the verifier runs here), pin them beside their maps, and exit.

Run by `bpf.Programs` as a short-lived child so that LLVM, which bcc keeps mapped after a
compile (~150 MB RSS), never stays in the agent. The maps pin themselves when bcc creates them
(BPF_TABLE_PINNED), or are reused when already pinned, so their contents survive. A program pin
is replaced: interfaces keep the old program until the agent's replace-filter swaps it.
Errors go to stderr, last line first-class (the agent reports it), exit status 1.
"""

from __future__ import annotations

import os
import sys

from datapath import bpf_sys
from datapath.bpf import HOOKS, cflags, ensure_bpffs, pin_dir, prog_pin, source_text


def load(host_netns: str | None, max_endpoints: int) -> None:
    """Compile, load and pin every hook's program for the node of `host_netns`."""
    from bcc import BPF

    ensure_bpffs()
    base = pin_dir(host_netns)
    os.makedirs(os.path.join(base, "progs"), exist_ok=True)
    compiled = BPF(text=source_text().encode(), cflags=cflags(host_netns, max_endpoints))
    for hook in HOOKS:
        fn = compiled.load_func(hook.encode(), BPF.SCHED_CLS)
        path = prog_pin(base, hook)
        if os.path.lexists(path):
            os.unlink(path)
        bpf_sys.obj_pin(int(fn.fd), path)


def main(argv: list[str]) -> int:
    """Entry point; argv: HOST_NETNS (empty for the agent's own) MAX_ENDPOINTS."""
    try:
        load(argv[1] or None, int(argv[2]))
    except Exception as e:  # bcc raises bare Exception; the parent shows this line
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"{type(e).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
