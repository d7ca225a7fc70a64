"""A node whose instance type vpcni's table lacks starts, from EC2's DescribeInstanceTypes.

The whole agent (a subprocess, `--cloud aws`) against the emulator over HTTP: IMDS says the
node is a `p9.fake`, which only DescribeInstanceTypes knows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.cloud import emulator
from agent.cloud.emulator.model import EmulatedType
from agent.ipam import instances

P9 = EmulatedType(
    limits=instances.InstanceType(
        name="p9.fake", vcpus=96, max_enis=4, ipv4_per_eni=30, hypervisor="nitro", bare_metal=False
    ),
    cards=(4,),
)


def test_the_agent_starts_on_a_type_the_table_lacks(start_agent: Any, tmp_path: Path) -> None:
    cloud = emulator.start_in_thread(instance_type="m5.large")
    try:
        cloud.model.add_instance_type(P9)
        cloud.model.instances[cloud.instance_id].type = P9.limits  # this node is a p9.fake
        agent = start_agent(
            "--cloud", "aws",
            state_dir=tmp_path,
            AWS_EC2_ENDPOINT=cloud.ec2_url,
            AWS_EC2_METADATA_SERVICE_ENDPOINT=cloud.imds_url,
            AWS_ACCESS_KEY_ID="sim",
            AWS_SECRET_ACCESS_KEY="sim",
            DISABLE_LEAKED_ENI_CLEANUP="true",
        )  # fmt: skip
        pool = agent.get("/v1/pool")
        assert pool["instance_type"] == "p9.fake"
        # prefix delegation on a Nitro type: (4 ENIs x 29 prefixes x 16 + 2), capped at 250
        assert pool["max_pods"] == 250
        assert "DescribeInstanceTypes" in agent.metrics()
    finally:
        cloud.close()
