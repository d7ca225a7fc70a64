"""The EC2 emulator: a pure model of one VPC (`model`), throttling and faults (`chaos`), and an
HTTP front speaking the EC2 Query API and IMDSv2 on loopback (`front`).

`start()` runs it on the caller's event loop; `start_in_thread()` gives it a thread and loop of
its own, so boto3 calls from executor threads never wait on the agent's loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from ipaddress import IPv4Network

from aiohttp import web

from agent.cloud.emulator.chaos import BucketSpec, Chaos
from agent.cloud.emulator.front import Front
from agent.cloud.emulator.model import ApiError, AttachListener, Ec2Model, Eni

__all__ = [
    "ApiError",
    "AsyncSimCloud",
    "AttachListener",
    "BucketSpec",
    "Ec2Model",
    "Eni",
    "SimCloud",
    "start",
    "start_in_thread",
]


class AsyncSimCloud:
    """A running emulator on the current event loop (from `start()`)."""

    def __init__(
        self, *, runner: web.AppRunner, front: Front, ec2_url: str, instance_id: str
    ) -> None:
        self._runner = runner
        self.front = front
        self.model: Ec2Model = front.model
        self.chaos: Chaos = front.chaos
        self.ec2_url = ec2_url
        self.imds_url = ec2_url  # IMDS shares the port: /latest/... next to POST /
        self.instance_id = instance_id
        self.region = self.model.region

    def imds_url_for(self, instance_id: str) -> str:
        """The IMDS base URL that answers as `instance_id` (for simulated extra nodes)."""
        return f"{self.ec2_url}/instances/{instance_id}"

    def launch_instance(
        self, *, instance_type: str | None = None, subnet_id: str | None = None
    ) -> str:
        """Launch another instance (default: same type and subnet as the first); its id."""
        first = self.model.instance(self.instance_id)
        instance = self.model.launch_instance(
            instance_type=instance_type or first.type.name,
            subnet_id=subnet_id or first.subnet_id,
            now=time.time(),
        )
        return instance.id

    async def close(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()

    async def __aenter__(self) -> AsyncSimCloud:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the emulator binds loopback only, not {host!r}")


async def start(
    *,
    instance_type: str = "m5.large",
    subnet_cidr: str = "10.0.0.0/20",
    vpc_cidr: str | None = None,
    fragmentation: float = 0.0,
    latency_scale: float = 0.0,
    faults: str = "",
    seed: int = 0,
    host: str = "127.0.0.1",
    port: int = 0,
    buckets: Mapping[str, BucketSpec] | None = None,
) -> AsyncSimCloud:
    """Build a model (one VPC, one subnet, one running instance of `instance_type`) and serve
    it on `host:port` (loopback only; port 0 picks a free one).

    `vpc_cidr` defaults to the subnet's /16 (or the subnet itself if wider). `buckets` overrides
    the throttling token buckets by class ("mutating", "describe", "unfiltered").
    ValueError or ApiError for bad arguments.
    """
    _check_loopback(host)
    subnet_net = IPv4Network(subnet_cidr)
    if vpc_cidr is None:
        vpc_cidr = str(
            subnet_net.supernet(new_prefix=16) if subnet_net.prefixlen > 16 else subnet_net
        )
    model = Ec2Model(seed=seed, vpc_cidr=vpc_cidr)
    subnet = model.add_subnet(subnet_cidr, fragmentation=fragmentation)
    instance = model.launch_instance(
        instance_type=instance_type, subnet_id=subnet.id, now=time.time()
    )
    chaos = Chaos(faults=faults, latency_scale=latency_scale, seed=seed, buckets=buckets)
    front = Front(model, chaos, imds_instance_id=instance.id)
    runner = web.AppRunner(front.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return AsyncSimCloud(
        runner=runner,
        front=front,
        ec2_url=f"http://{bound_host}:{bound_port}",
        instance_id=instance.id,
    )


class SimCloud:
    """An emulator on its own thread and event loop (from `start_in_thread()`); `close()` is
    synchronous. Same attributes as AsyncSimCloud, which it wraps as `.cloud`."""

    def __init__(
        self, cloud: AsyncSimCloud, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.cloud = cloud
        self.model = cloud.model
        self.chaos = cloud.chaos
        self.ec2_url = cloud.ec2_url
        self.imds_url = cloud.imds_url
        self.instance_id = cloud.instance_id
        self.region = cloud.region
        self._loop = loop
        self._thread = thread

    def imds_url_for(self, instance_id: str) -> str:
        """The IMDS base URL that answers as `instance_id`."""
        return self.cloud.imds_url_for(instance_id)

    def launch_instance(
        self, *, instance_type: str | None = None, subnet_id: str | None = None
    ) -> str:
        """Launch another instance (the model is thread-safe); its id."""
        return self.cloud.launch_instance(instance_type=instance_type, subnet_id=subnet_id)

    def close(self) -> None:
        """Stop serving and join the thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.cloud.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> SimCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_in_thread(
    *,
    instance_type: str = "m5.large",
    subnet_cidr: str = "10.0.0.0/20",
    vpc_cidr: str | None = None,
    fragmentation: float = 0.0,
    latency_scale: float = 0.0,
    faults: str = "",
    seed: int = 0,
    host: str = "127.0.0.1",
    port: int = 0,
    buckets: Mapping[str, BucketSpec] | None = None,
) -> SimCloud:
    """`start()` on a new daemon thread running its own (stdlib) event loop; returns once the
    port is bound, re-raising any start-up error here."""
    loop = asyncio.new_event_loop()
    started: Future[AsyncSimCloud] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            cloud = loop.run_until_complete(
                start(
                    instance_type=instance_type,
                    subnet_cidr=subnet_cidr,
                    vpc_cidr=vpc_cidr,
                    fragmentation=fragmentation,
                    latency_scale=latency_scale,
                    faults=faults,
                    seed=seed,
                    host=host,
                    port=port,
                    buckets=buckets,
                )
            )
        except BaseException as e:
            started.set_exception(e)
            loop.close()
            return
        started.set_result(cloud)
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="vpcni-ec2-sim", daemon=True)
    thread.start()
    return SimCloud(started.result(), loop, thread)
