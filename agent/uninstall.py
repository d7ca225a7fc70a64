"""`vpcni-ctl uninstall`: take vpcni off a node; running pods keep their networking.

Run it after the agent has stopped (the DaemonSet deleted), on the node or in a privileged pod
with the DaemonSet's mounts (deploy/uninstall.yaml). In order:
0. with --restore-aws-node, aws-node's checkpoint from vpcni's and its conflist put back
   (agent.cni.uninstall_cli; nothing at all changes if either cannot be done);
1. the conflist, then the vpcni plugin (agent.cni.install.uninstall): the runtime sends no new
   pod to vpcni; loopback and portmap stay (other networks use them);
2. vpcni's tc programs, from every interface of the node's netns that has one (its clsact
   qdisc goes with it); pods' host veths get rp_filter=1, the anti-spoofing kernel mode uses,
   since from_pod no longer checks their sources;
3. the pinned maps (/sys/fs/bpf/vpcni, or that of --host-netns).
Routes, rules and veths stay, so running pods go on over the kernel's routing (kernel mode's
path). The checkpoint stays in the state directory for a reinstall.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.cni import install, uninstall_cli
from datapath.bpf import Programs, pin_dir
from datapath.wiring import entered, netlink


@dataclass
class Report:
    """What `uninstall` removed or changed."""

    files: list[Path] = field(default_factory=list)
    detached: dict[str, str] = field(default_factory=dict)  # interface → program
    strict_rp_filter: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)


def agent_answers(path: Path) -> bool:
    """Whether an agent listens on the socket (it would put back what uninstall removes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def detach_programs(host_netns: str | None, report: Report) -> None:
    """Remove vpcni's tc program from every interface in the node's netns that carries one."""
    with netlink(host_netns) as ipr:
        for link in ipr.get_links():
            index, name = link["index"], link.get_attr("IFLA_IFNAME")
            program = Programs.attached(ipr, index)
            if program not in ("from_pod", "from_eni"):
                continue
            Programs.detach(ipr, index)
            report.detached[name] = program
    for name, program in report.detached.items():
        if program == "from_pod":
            with entered(host_netns), open(f"/proc/sys/net/ipv4/conf/{name}/rp_filter", "w") as f:
                f.write("1\n")
            report.strict_rp_filter.append(name)


def remove_pins(host_netns: str | None, report: Report) -> None:
    """Unpin the maps and the programs the loader pinned under progs/ (the kernel frees them
    with their last user). The root node's pin directory also holds sandbox nodes' pins under
    netns/: those stay."""
    directory = Path(pin_dir(host_netns))
    for folder in (directory / "progs", directory):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():
                continue
            entry.unlink()
            report.pins.append(str(entry))
        if not any(folder.iterdir()):
            folder.rmdir()


def uninstall(*, bin_dir: Path, conf_dir: Path, host_netns: str | None) -> Report:
    """Steps 1-3 of the module docstring; each is idempotent, so a second run is a no-op."""
    report = Report(files=install.uninstall(bin_dir, conf_dir))
    detach_programs(host_netns, report)
    remove_pins(host_netns, report)
    return report


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Register `vpcni-ctl uninstall`."""
    paths = install.Paths.from_env(os.environ)
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument(
        "--cni-bin-dir",
        type=Path,
        default=paths.bin_dir,
        help=f"the node's CNI bin dir as seen here (default {paths.bin_dir})",
    )
    parser.add_argument(
        "--cni-conf-dir",
        type=Path,
        default=paths.conf_dir,
        help=f"the node's CNI conf dir as seen here (default {paths.conf_dir})",
    )
    parser.add_argument(
        "--host-netns",
        default=os.environ.get("VPCNI_HOST_NETNS") or None,
        help="the node's netns, for a sandbox node (default: this one)",
    )
    parser.add_argument("--socket", type=Path,
                        default=Path(os.environ.get("VPCNI_SOCKET", "/run/vpcni/agent.sock")),
                        help="refuse while an agent answers here")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="even while an agent answers")
    uninstall_cli.add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The subcommand: uninstall and say what was done."""
    if agent_answers(args.socket) and not args.force:
        print(
            f"vpcni-ctl uninstall: an agent answers on {args.socket}; stop it first "
            "(kubectl -n kube-system delete daemonset vpcni), or --force",
            file=sys.stderr,
        )
        return 1
    if args.restore_aws_node and not uninstall_cli.restore_aws_node(
        args.cni_conf_dir, args.checkpoint, args.aws_node_checkpoint
    ):
        return 1
    report = uninstall(
        bin_dir=args.cni_bin_dir, conf_dir=args.cni_conf_dir, host_netns=args.host_netns
    )
    for path in report.files:
        print(f"removed {path}")
    for name, program in sorted(report.detached.items()):
        print(f"detached {program} from {name}")
    if report.strict_rp_filter:
        print(f"rp_filter=1 on {len(report.strict_rp_filter)} pod veths")
    print(f"unpinned {len(report.pins)} maps")
    return 0
