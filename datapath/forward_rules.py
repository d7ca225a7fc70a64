"""Netfilter rules in the FORWARD path that BPF mode skips.

`bpf_redirect_peer` and `bpf_redirect_neigh` move pod↔pod and pod↔VPC packets past the host's
netfilter, so an iptables/nftables NetworkPolicy engine (Calico policy-only, kube-router) never
sees them. Until vpcni enforces policy itself, the agent looks for such rules at start and says
so (log, GET /v1/datapath, the vpcni_policy_bypass_rules metric); `--datapath kernel` keeps them
in force. kube-proxy's own FORWARD rules are not policy and are left out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

from datapath.wiring import entered

# kube-proxy's chains (iptables and nftables modes): Service plumbing, not NetworkPolicy.
KUBE_PROXY_CHAINS = frozenset(
    {
        "KUBE-FORWARD",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
        "KUBE-PROXY-CANARY",
    }
)
KUBE_PROXY_NFT_TABLES = frozenset({"kube-proxy"})
# iptables-nft keeps its tables in nftables too; iptables-save already reports them.
IPTABLES_NFT_TABLES = frozenset({"filter", "mangle", "raw", "security", "nat"})


def iptables_forward_rules(saved: str, tool: str) -> list[str]:
    """FORWARD rules (and a FORWARD policy other than ACCEPT) in `iptables-save -t filter`
    output, except those jumping to kube-proxy's chains."""
    found = []
    for line in saved.splitlines():
        if line.startswith(":FORWARD ") and line.split()[1] != "ACCEPT":
            found.append(f"{tool}: FORWARD policy {line.split()[1]}")
        elif line.startswith("-A FORWARD "):
            words = line.split()
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if target not in KUBE_PROXY_CHAINS:
                found.append(f"{tool}: {line}")
    return found


def nft_forward_chains(ruleset: dict[str, Any]) -> list[str]:
    """nftables base chains on the forward hook that hold rules or drop by default, from
    `nft -j list ruleset`, except kube-proxy's table and iptables-nft's own tables."""
    items = ruleset.get("nftables", [])
    rules: dict[tuple[str, str, str], int] = {}
    for item in items:
        rule = item.get("rule")
        if rule:
            key = (rule["family"], rule["table"], rule["chain"])
            rules[key] = rules.get(key, 0) + 1
    found = []
    for item in items:
        chain = item.get("chain")
        if not chain or chain.get("hook") != "forward" or chain.get("family") not in ("ip", "inet"):
            continue
        table = chain["table"]
        if table in KUBE_PROXY_NFT_TABLES or table in IPTABLES_NFT_TABLES:
            continue
        count = rules.get((chain["family"], table, chain["name"]), 0)
        policy = chain.get("policy", "accept")
        if count or policy != "accept":
            found.append(
                f"nft: table {chain['family']} {table} chain {chain['name']} "
                f"(hook forward, {count} rules, policy {policy})"
            )
    return found


def _run(cmd: Iterable[str]) -> str | None:
    argv = list(cmd)
    if shutil.which(argv[0]) is None:
        return None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return done.stdout if done.returncode == 0 else None


def detect(host_netns: str | None) -> list[str]:
    """The FORWARD-path rules of the host netns that BPF mode's redirects skip (sync: call it
    from a worker thread). Both iptables backends are read: a node may use either."""
    found: list[str] = []
    with entered(host_netns):
        for tool in ("iptables-nft-save", "iptables-legacy-save"):
            saved = _run([tool, "-t", "filter"])
            if saved:
                found += iptables_forward_rules(saved, tool.removesuffix("-save"))
        ruleset = _run(["nft", "-j", "list", "ruleset"])
    if ruleset:
        try:
            found += nft_forward_chains(json.loads(ruleset))
        except (ValueError, KeyError, TypeError) as e:
            # Better a false alarm than a silent bypass.
            found.append(f"nft: cannot read `nft -j list ruleset` ({e}); check the forward hook")
    return found
