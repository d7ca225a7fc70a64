"""Resync and leak GC: re-read what EC2 says this node has, and delete ENIs nobody owns.

EC2 is the truth for ENIs and blocks; the checkpoint is the truth for leases. A resync folds
the former into the state (leases whose block vanished are dropped) and tells the datapath
about ENIs it has not seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.cloud.port import Ec2Error, Ec2Port, NodeIdentity
from agent.counters import Counters
from agent.executor import eni_link
from agent.ipam.state import NodeState, ReconcileReport
from agent.store import CheckpointStore
from datapath.port import Datapath

log = logging.getLogger("vpcni.resync")

# How often the pool manager re-reads EC2 even when nothing happens (VPC CNI: ~1 min).
RESYNC_PERIOD = 60.0
# ENIs vpcni created that stayed detached this long are leaks (a crash between create and
# attach): the VPC CNI waits as long before deleting them.
LEAK_MIN_AGE = 300.0
# How often leaked ENIs are looked for after the pass at start-up (the VPC CNI: hourly).
LEAK_PERIOD = 3600.0


class Resync:
    """Keeps the node's ENI view true to EC2 and cleans up leaked ENIs."""

    def __init__(
        self,
        *,
        state: NodeState,
        ec2: Ec2Port,
        datapath: Datapath,
        store: CheckpointStore,
        identity: NodeIdentity,
        counters: Counters,
        clock: Callable[[], float],
    ) -> None:
        self.state = state
        self.ec2 = ec2
        self.datapath = datapath
        self.store = store
        self.identity = identity
        self.counters = counters
        self.clock = clock
        self.last = 0.0
        self.last_cleanup = 0.0

    def due(self) -> bool:
        """Has a period passed since the last resync (or did the last one fail)?"""
        return self.clock() - self.last > RESYNC_PERIOD

    def cleanup_due(self) -> bool:
        """Has an hour passed since the last leaked-ENI pass?"""
        return self.clock() - self.last_cleanup > LEAK_PERIOD

    async def initial(self) -> ReconcileReport:
        """The start-up read: fold EC2's ENIs into an empty state (the datapath starts later)."""
        views = await self.ec2.describe_enis(self.identity.instance_id)
        report = self.state.reconcile(views)
        self.last = self.clock()
        return report

    async def resync(self) -> ReconcileReport:
        """Re-read ENIs and blocks from EC2 (the truth) and drop leases whose block vanished."""
        with self.counters.doing("nodeIPPoolReconcile"):
            views = await self.ec2.describe_enis(self.identity.instance_id)
            report = self.state.reconcile(views)
        self.last = self.clock()
        self.count(report)
        for eni_id in report.enis_added:
            eni = self.state.enis[eni_id]
            if eni.is_managed():  # not vpcni's ENIs get no datapath
                await self.datapath.add_eni(eni_link(eni))
        if report.leases_dropped:
            self.counters.leases_dropped += len(report.leases_dropped)
            await self.store.commit()
        return report

    def count(self, report: ReconcileReport) -> None:
        """Record what a reconcile changed under aws-node's metric names."""
        c = self.counters
        c.reconciled("eniReconcileAdd", len(report.enis_added))
        c.reconciled("eniReconcileDel", len(report.enis_removed))
        c.reconciled("eniDataStorePoolReconcileAdd", report.blocks_added)
        c.reconciled("eniIPPoolReconcileDel", report.blocks_removed)
        gone = set(report.enis_removed)
        c.force_removed_enis += len({lease.eni_id for lease in report.leases_dropped} & gone)
        c.force_removed_ips += len(report.leases_dropped)

    async def quietly(self) -> bool:
        """Resync, logging (not raising) an EC2 failure; False then, and the pool manager's
        next round tries again before anything else."""
        try:
            await self.resync()
        except Ec2Error as e:
            log.warning("resync failed", extra={"error": str(e)})
            self.last = 0.0
            return False
        return True

    async def cleanup_leaked(self) -> None:
        """Delete ENIs this node created that never got attached (logged, never raised)."""
        self.last_cleanup = self.clock()
        try:
            deleted = await self.ec2.cleanup_leaked_enis(
                self.identity.instance_id, older_than=LEAK_MIN_AGE
            )
        except Ec2Error as e:
            log.warning("leaked ENI cleanup failed", extra={"error": str(e)})
            return
        if deleted:
            log.info("leaked ENIs deleted", extra={"count": deleted})
