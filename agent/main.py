"""vpcni-agent: settings → IMDS → EC2 describe → checkpoint → reconcile → pool manager → serve.

Ready (GET /readyz) only once all of that is done. SIGTERM/SIGINT: stop taking ADDs, finish
what is in flight, write the checkpoint, leave pod networking in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

import boto3
import uvloop

from agent import logs
from agent.adopt import AdoptError
from agent.api.server import serve
from agent.cloud import instance_type
from agent.cloud.aws import Ec2Adapter
from agent.cloud.eniconfig import load_eni_config
from agent.cloud.imds import ImdsClient, ImdsError
from agent.cloud.port import Ec2Error, NodeIdentity
from agent.cni import lifecycle as cni_lifecycle
from agent.ipam import instances
from agent.node import Node
from agent.settings import Settings, SettingsError, load
from agent.store import StoreError
from datapath.port import Datapath, DatapathError, NoDatapath

log = logging.getLogger("vpcni.agent")


class StartupError(Exception):
    """The agent cannot start; the message says why."""


async def run(settings: Settings) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        imds_endpoint: str | None = None
        endpoint_url = settings.ec2_endpoint
        session: boto3.session.Session | None = None
        sandbox = None
        cloud = None
        if settings.cloud == "sim":
            from agent import sim

            cloud = sim.start_cloud(settings)
            stack.callback(cloud.close)
            # Runs after node.stop (LIFO): what EC2 holds when the agent is gone.
            stack.callback(sim.save_cloud, cloud, settings)
            imds_endpoint, endpoint_url = cloud.imds_url, cloud.ec2_url
            # The emulator checks no signature; boto3 still wants credentials to sign with.
            session = boto3.session.Session(
                aws_access_key_id="sim", aws_secret_access_key="sim", region_name=cloud.region
            )
            log.info(
                "EC2 emulator started",
                extra={"ec2": cloud.ec2_url, "imds": cloud.imds_url, "instance": cloud.instance_id},
            )
        identity = await _identity(imds_endpoint)
        ec2 = Ec2Adapter(
            region=identity.region,
            endpoint_url=endpoint_url,
            session=session,
            qps=settings.ec2_qps,
            burst=settings.ec2_burst,
            cluster_name=settings.cluster_name,
            extra_tags=settings.additional_eni_tags,
        )
        stack.push_async_callback(ec2.close)
        try:
            instance = await instance_type.resolve(identity.instance_type, ec2)
        except instances.UnknownInstanceType as e:
            raise StartupError(str(e)) from None
        if cloud is not None and settings.host_netns:
            from agent import sim
            from datapath.sandbox import Sandbox

            sandbox = Sandbox(settings.host_netns, remote_host_ip=sim.remote_host_ip(identity))
            await asyncio.to_thread(sandbox.up)
            links = sim.SandboxLinks(cloud, sandbox)
            await asyncio.to_thread(links.attach_existing, cloud.instance_id)
            cloud.model.add_listener(links)
            stack.callback(links.close)
            stack.callback(cloud.model.remove_listener, links)
        datapath = await _datapath(settings, identity)
        if sandbox is not None:
            from agent import sim

            datapath = sim.SandboxedDatapath(datapath, sandbox)
        subnet, groups = None, None
        if settings.pool.custom_networking and settings.eni_config is not None:
            eni_config = load_eni_config(settings.eni_config)
            subnet, groups = eni_config.subnet, tuple(eni_config.security_groups)
        node = Node(
            settings=settings,
            identity=identity,
            instance=instance,
            ec2=ec2,
            datapath=datapath,
            new_eni_subnet=subnet,
            new_eni_security_groups=groups,
        )
        if settings.node_name:
            await _watch_kubernetes(settings, node, stack)
        try:
            await node.start()
        except Ec2Error as e:
            raise StartupError(f"EC2 describe failed: {e}") from e
        except StoreError as e:
            raise StartupError(f"checkpoint: {e}") from e
        except AdoptError as e:
            raise StartupError(str(e)) from e
        except DatapathError as e:
            raise StartupError(
                f"{datapath.mode} datapath cannot start: {e} (it needs root/CAP_NET_ADMIN; "
                "--datapath none runs IPAM only)"
            ) from e
        stack.push_async_callback(node.stop)
        try:
            runners = await serve(
                node,
                socket_path=settings.socket,
                introspection_addr=settings.introspection,
                metrics_addr=settings.metrics,
            )
        except (OSError, RuntimeError) as e:  # a port in use, a live agent on the socket
            raise StartupError(f"cannot listen: {e}") from e
        for runner in runners:
            stack.push_async_callback(runner.cleanup)
        # Spooled DELs replayed, then the conflist published: the runtime's cue that we are ready.
        stack.push_async_callback(await cni_lifecycle.start(node, settings.socket, os.environ))
        node.counters.startup_seconds = process_age()
        settle_heap()
        log.info(
            "ready",
            extra={
                "instance_id": identity.instance_id,
                "instance_type": instance.name,
                "socket": str(settings.socket),
                "datapath": datapath.mode,
                "max_pods": node.max_pods,
                "enis": len(node.state.enis),
                "leases": node.state.lease_count(),
            },
        )
        await stop.wait()
        log.info("stopping: no more ADDs, finishing in-flight requests")
        node.accepting = False


def settle_heap() -> None:
    """Take what start-up built (boto3's EC2 model, aiohttp, the instance table: most of the
    heap, and kept for good) out of the cyclic collector's reach.

    Full collections walked all of it on the event loop, 84-267 ms each, in the middle of CNI
    requests; frozen objects are never scanned again, so a full pass only sees what was made
    since. CPython's young-generation thresholds stay: larger ones made young passes longer
    (bench/gc_pause.py).
    """
    gc.collect()
    gc.freeze()


async def _watch_kubernetes(
    settings: Settings, node: Node, stack: contextlib.AsyncExitStack
) -> None:
    """Follow this node in the Kubernetes API (its capacity.pods is max pods, as for ipamd) and,
    with custom networking and no ENIConfig file, its ENIConfig; ENIs wait for that, pods
    never wait for the API."""
    from agent import kube

    assert settings.node_name is not None
    eni_config = settings.eni_config_from_kubernetes
    try:
        client = kube.client_from_env()
    except Exception as e:  # no service account and no KUBECONFIG
        if eni_config:
            raise StartupError(f"custom networking needs the Kubernetes API: {e}") from e
        log.info(
            "no Kubernetes API: max pods from the EKS calculator",
            extra={"max_pods": node.max_pods, "error": str(e)},
        )
        return
    stack.push_async_callback(client.close)
    if eni_config:
        node.use_eni_config(None, ())
    watch = kube.KubeWatch(
        client=client,
        node_name=settings.node_name,
        on_max_pods=node.use_node_capacity,
        on_eni_config=(
            (lambda choice: node.use_eni_config(choice.subnet, choice.security_groups))
            if eni_config
            else None
        ),
        annotation_key=settings.eni_config_annotation,
        label_key=settings.eni_config_label,
    )
    node.kube_watch = watch
    task = asyncio.create_task(watch.run(), name="kube-watch")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


def process_age() -> float | None:
    """Seconds since this process started (aws-node's start-up duration counts from there)."""
    try:
        with open("/proc/self/stat") as f:
            # The command name (field 2) may hold spaces; start time is field 22 overall.
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


async def _identity(endpoint: str | None) -> NodeIdentity:
    try:
        async with ImdsClient(endpoint) as imds:
            return await imds.node_identity()
    except ImdsError as e:
        raise StartupError(f"IMDS: {e}") from e


async def _datapath(settings: Settings, identity: NodeIdentity) -> Datapath:
    if settings.datapath == "none":
        return NoDatapath()
    from datapath.factory import make_datapath

    return await make_datapath(
        settings.datapath,
        host_netns=settings.host_netns,
        vpc_cidrs=identity.vpc_cidrs,
        mtu=settings.mtu,
        snat=settings.snat,
    )


# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms). The
# journal's fdatasync, boto3 and netlink run on worker threads; each needs the GIL back for a
# moment after its system call, and a busy event loop would make every durable reply wait up
# to the default's 5 ms for it.
SWITCH_INTERVAL = 0.0005


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `vpcni-agent`."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        settings = load(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as e:
        print(f"vpcni-agent: {e}", file=sys.stderr)
        return 2
    try:
        logs.configure(settings.log_level, settings.log_file)
    except OSError as e:
        print(f"vpcni-agent: AWS_VPC_K8S_CNI_LOG_FILE={settings.log_file}: {e}", file=sys.stderr)
        return 2
    for warning in settings.warnings:
        log.warning(warning)
    try:
        uvloop.run(run(settings))
    except StartupError as e:
        log.error("start-up failed", extra={"error": str(e)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
