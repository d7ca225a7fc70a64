"""`make bench`: every benchmark, side by side with its peer, printed as a markdown report.

Results belong in docs/benchmarks.md (with the date and the machine); ratios are vpcni / peer
for times (lower is better) and peer / vpcni for rates, so > 1 always means vpcni is ahead
only where the column says so.
"""

from __future__ import annotations

import os
import platform
import time

from bench import allocator, burst, cni, fleet, traffic


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
          "| VERSION vpcni | VERSION peer | ratio | STATUS vpcni |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("bpf", "kernel"):
        r = cni.run(datapath=mode)
        print(
            f"| {r['datapath']} | {r['pods']} | {r['vpcni_add_ms']} | {r['peer_add_ms']} "
            f"| {r['add_ratio']} | {r['vpcni_del_ms']} | {r['peer_del_ms']} | {r['del_ratio']} "
            f"| {r['vpcni_version_ms']} | {r['peer_version_ms']} | {r['version_ratio']} "
            f"| {r['vpcni_status_ms']} |"
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


if __name__ == "__main__":
    main()
