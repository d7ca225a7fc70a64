"""`make bench`: every benchmark, side by side with its peer, printed as a markdown report.

Results belong in docs/benchmarks.md (with the date and the machine); ratios are vpcni / peer
for times (lower is better) and peer / vpcni for rates, so > 1 always means vpcni is ahead
only where the column says so.
"""

from __future__ import annotations

import os
import platform
import time

from bench import allocator, bpf_memory, burst, cni, fleet, snat, traffic


def main() -> None:
    print(f"# vpcni benchmarks, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, kernel {platform.release()}\n")  # fmt: skip
    print("## Allocator churn (ops/s, best of 5; ratio = vpcni / peer throughput)\n")
    print("| scenario | ops | vpcni ops/s | peer ops/s | vpcni/peer |")
    print("|---|---|---|---|---|")
    for row in allocator.main():
        print(
            f"| {row['scenario']} | {row['ops']} | {row['vpcni_ops_s']} | {row['peer_ops_s']} "
            f"| {row['ratio']} |"
        )
    b = burst.main()
    print(f"\n## Pod-start burst: {b['pods']} pods at once on a fresh node, EC2 latency x1.0 "
          "(seconds until each pod has its address; ratio = vpcni / peer)\n")  # fmt: skip
    print("| | p50 s | p90 s | max s | ADDs sent |")
    print("|---|---|---|---|---|")
    for name in ("vpcni", "peer"):
        r = b[name]
        print(f"| {name} | {r['p50_s']} | {r['p90_s']} | {r['max_s']} | {r['adds_sent']} |")
    print(f"| ratio | {b['p50_ratio']} | | {b['max_ratio']} | |")
    f = fleet.main()
    print(f"\n## Fleet scale-up: {f['nodes']} nodes x {f['pods_per_node']} pods, one throttled "
          "account (ratio = vpcni / peer)\n")  # fmt: skip
    print("| | all pods placed, s | mutating calls | throttled |")
    print("|---|---|---|---|")
    for name in ("vpcni", "peer"):
        r = f[name]
        print(f"| {name} | {r['all_pods_s']} | {r['mutating_calls']} | {r['throttled']} |")
    print(f"| ratio | {f['time_ratio']} | {f['calls_ratio']} | |")
    if os.geteuid() != 0:
        print("\n(CNI latency and traffic need root: skipped)")
        return
    print("\n## CNI plugin latency (median ms; ratio = vpcni / ptp+host-local, lower is better)\n")
    print("| datapath | pods | ADD vpcni | ADD peer | ratio | DEL vpcni | DEL peer | ratio "
          "| VERSION vpcni | VERSION peer | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("bpf", "kernel"):
        r = cni.run(datapath=mode)
        print(
            f"| {r['datapath']} | {r['pods']} | {r['vpcni_add_ms']} | {r['peer_add_ms']} "
            f"| {r['add_ratio']} | {r['vpcni_del_ms']} | {r['peer_del_ms']} | {r['del_ratio']} "
            f"| {r['vpcni_version_ms']} | {r['peer_version_ms']} | {r['version_ratio']} |"
        )
    rows = traffic.main()
    if rows:
        base = next(r for r in rows if r["datapath"] == "kernel")
        print("\n## Pod-to-pod traffic (median of 3; ratio = throughput / kernel routing)\n")
        print("| datapath | TCP Gbit/s | ratio | ping RTT µs |")
        print("|---|---|---|---|")
        for r in rows:
            ratio = r["gbit_s"] / base["gbit_s"]
            print(f"| {r['datapath']} | {r['gbit_s']} | {ratio:.2f} | {r['ping_rtt_us']} |")
    print("\n## Agent memory in BPF mode: compile in a child vs in the agent (MiB, once ready)\n")
    print("| agent | RSS | peak RSS |")
    print("|---|---|---|")
    for r in bpf_memory.main():
        print(f"| {r['agent']} | {r['rss_mib']} | {r['peak_mib']} |")
    rows = snat.main()
    if rows:
        print("\n## Pod to the internet: BPF SNAT vs MASQUERADE --random-fully (median of 3; "
              "ratio = figure / kernel MASQUERADE, higher is better)\n")  # fmt: skip
        print("| setup | TCP Gbit/s | ratio | TCP RR/s | ratio | new conn/s | ratio |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['setup']} | {r['gbit_s']} | {r['gbit_s_ratio']} | {r['rr_s']} "
                  f"| {r['rr_s_ratio']} | {r['conn_s']} | {r['conn_s_ratio']} |")  # fmt: skip


if __name__ == "__main__":
    main()
