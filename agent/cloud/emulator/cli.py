"""`vpcni-ctl ec2-sim serve`: run the EC2 + IMDS emulator standalone until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent.cloud import emulator
from agent.cloud.emulator.model import ApiError


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Register `serve` under the `ec2-sim` subcommand."""
    sub = parser.add_subparsers(dest="ec2_sim_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="serve EC2 Query API + IMDSv2 on loopback")
    serve.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
    serve.add_argument("--instance-type", default="m5.large", help="type of the first instance")
    serve.add_argument("--subnet-cidr", default="10.0.0.0/20", help="the instance's subnet")
    serve.add_argument(
        "--fragmentation",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction [0,1) of the subnet held by other tenants, spread over /28 blocks",
    )
    serve.add_argument(
        "--latency-scale",
        type=float,
        default=0.0,
        metavar="S",
        help="1.0 ~ AWS latencies, 0 = instant",
    )
    serve.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="e.g. 'AssignPrivateIpAddresses:throttle=0.2,5xx=0.1;*:timeout=0.01'",
    )
    serve.add_argument("--seed", type=int, default=0, metavar="N")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Start the emulator, print its URLs, and serve until interrupted."""
    try:
        cloud = emulator.start_in_thread(
            instance_type=args.instance_type,
            subnet_cidr=args.subnet_cidr,
            fragmentation=args.fragmentation,
            latency_scale=args.latency_scale,
            faults=args.faults,
            seed=args.seed,
            port=args.port,
        )
    except (ValueError, ApiError, OSError) as e:
        print(f"vpcni-ctl ec2-sim: {e}", file=sys.stderr)
        return 2
    print(f"EC2:      {cloud.ec2_url}")
    print(f"IMDS:     {cloud.imds_url}")
    print(f"instance: {cloud.instance_id} ({args.instance_type}, {cloud.region})")
    sys.stdout.flush()
    try:
        asyncio.run(_forever())
    finally:
        cloud.close()
    return 0


async def _forever() -> None:
    await asyncio.Event().wait()
