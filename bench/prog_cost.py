"""Nanoseconds per packet of the tc programs alone, with BPF_PROG_TEST_RUN (root + bcc).

No interfaces or netns: the programs run on a synthetic TCP packet against their own pinned
maps (two local pods, one ENI, VPC 10.0.0.0/16). The kernel reports the mean time per run; a
run repeats on the same packet, so TTL 255 and 250 repeats keep every run on the redirect path.
SNAT rewrites the packet it runs on, so its cases (an established flow out through to_eni, its
reply in through from_eni) run once per call on a fresh copy. `python -m bench.prog_cost`
prints the medians of many such calls.
"""

from __future__ import annotations

import ctypes
import shutil
import statistics
import struct
from ipaddress import IPv4Address, IPv4Network

from datapath.bpf import Endpoint, Eni, Programs, Randomize, SnatConfig, pin_dir

NAME = "vpcni-bench-prog-cost"
POD_A, POD_B, VPC_HOST = "10.0.0.100", "10.0.0.101", "10.0.5.5"
NODE_IP, INTERNET = "10.0.0.10", "203.0.113.10"
LOOPBACK = 1  # BPF_PROG_TEST_RUN runs on the netns's lo: the "primary ENI" for SNAT cases
HOST_IFINDEX, ENI_IFINDEX = 1000, 2000
_SYS_BPF = 321  # x86_64
_BPF_PROG_TEST_RUN = 10
_REPEAT = 250  # < TTL: every run forwards (forward_hop decrements the one packet)


def _packet(src: str, dst: str, sport: int = 40000, dport: int = 8080) -> bytes:
    eth = b"\x02" * 12 + b"\x08\x00"
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 255, 6, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    )  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x10, 1000, 0, 0)
    return eth + ip + tcp


def _test_run(
    prog_fd: int, data: bytes, ingress_ifindex: int, repeat: int = _REPEAT
) -> tuple[int, int]:
    """(verdict, mean ns per run) of one BPF_PROG_TEST_RUN."""
    libc = ctypes.CDLL(None, use_errno=True)
    packet = ctypes.create_string_buffer(data, len(data))
    # struct __sk_buff up to ingress_ifindex, the 10th __u32 (test_run accepts a prefix).
    ctx = ctypes.create_string_buffer(struct.pack("=10I", *[0] * 9, ingress_ifindex), 40)
    fields = (prog_fd, 0, len(data), 0, ctypes.addressof(packet), 0, repeat, 0, 40, 0)
    attr = ctypes.create_string_buffer(
        struct.pack("=IIIIQQIIIIQQ", *fields, ctypes.addressof(ctx), 0), 128
    )
    if libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, attr, 128) != 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN")
    _, verdict, *_, duration = struct.unpack_from("=IIIIQQII", attr.raw)
    return verdict, duration


def main(calls: int = 4000) -> dict[str, float]:
    """Median ns per packet for each case."""
    programs = Programs(NAME)
    try:
        programs.set_vpc_cidrs([IPv4Network("10.0.0.0/16")])
        for i, ip in enumerate((POD_A, POD_B)):
            mac = f"02:00:00:00:00:{i:02x}"
            programs.put_endpoint(
                IPv4Address(ip), Endpoint(HOST_IFINDEX + i, ENI_IFINDEX, mac, mac)
            )
        programs.put_eni(ENI_IFINDEX, Eni(IPv4Address("10.0.0.1"), "02:00:00:00:01:00"))
        cases = {
            "from_pod pod→pod": ("from_pod", _packet(POD_A, POD_B), HOST_IFINDEX),
            "from_pod pod→VPC": ("from_pod", _packet(POD_A, VPC_HOST), HOST_IFINDEX),
            "from_eni VPC→pod": ("from_eni", _packet(VPC_HOST, POD_A), ENI_IFINDEX),
        }
        out = {}
        for label, (hook, data, ifindex) in cases.items():
            fd = programs.prog_fd(hook)
            runs = [_test_run(fd, data, ifindex) for _ in range(calls)]
            assert {verdict for verdict, _ in runs} == {7}, f"{label} left the redirect path"
            out[label] = statistics.median(ns for _, ns in runs)
        out.update(_snat_cases(programs, calls))
        return out
    finally:
        shutil.rmtree(pin_dir(NAME), ignore_errors=True)


def _snat_cases(programs: Programs, calls: int) -> dict[str, float]:
    """An established SNATed flow: the pod's packet out (to_eni), the reply in (from_eni)."""
    programs.set_snat(
        SnatConfig(
            node_ip=IPv4Address(NODE_IP),
            node_ifindex=LOOPBACK,
            port_min=61000,
            port_max=65535,
            randomize=Randomize.PRNG,
            hash_secret=0,
            tcp_timeout=21600,
            closing_timeout=10,
            udp_timeout=60,
            icmp_timeout=30,
        )
    )
    out_fd, in_fd = programs.prog_fd("to_eni"), programs.prog_fd("from_eni")
    out_packet = _packet(POD_A, INTERNET)
    assert _test_run(out_fd, out_packet, 0, repeat=1)[0] == 0  # claims the port
    [(key, _)] = programs.nat_entries("in").items()
    reply = _packet(INTERNET, NODE_IP, sport=8080, dport=key.local_port)
    out = {}
    for label, fd, data in (("to_eni SNAT out", out_fd, out_packet),
                            ("from_eni SNAT reply", in_fd, reply)):  # fmt: skip
        runs = [_test_run(fd, data, ENI_IFINDEX, repeat=1) for _ in range(calls)]
        assert {verdict for verdict, _ in runs} == {0}, f"{label}: not passed on"
        out[label] = statistics.median(ns for _, ns in runs)
    counters = programs.snat_stats()
    assert counters["new"] == 1 and counters["in"] >= calls, counters  # every run translated
    return out


if __name__ == "__main__":
    for label, ns in main().items():
        print(f"{label}: {ns:.0f} ns")
