"""The pool manager: asks the planner what to do and hands each decision to the executor.

One round's decision in flight at a time, except for ADDs: when one waits while an action is in
flight, the planner is asked at once, told what is in flight, and may start a growth beside it
for the ADDs that one will not serve (a burst then waits for one EC2 call, not two in a row).
Rounds run on wake-ups (an ADD found the pool short, a DEL freed an address) and on a jittered
period; after an EC2 failure they wait out the executor's pause, wake-ups included. A wake-up
with an ADD waiting starts a round at once; the others (the pool changed under an ADD or a DEL)
are gathered for COALESCE seconds into one round, so a node serving thousands of requests a
second does not plan once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from agent.counters import Counters
from agent.executor import Ec2Executor
from agent.ipam.backoff import PrefixBackoff
from agent.ipam.planner import Action, Decision, Limits, PoolMemory, plan
from agent.ipam.state import NodeState
from agent.resync import Resync
from agent.settings import Settings

log = logging.getLogger("vpcni.pool")

# How long wake-ups without a waiting ADD are gathered: far below EC2's latency (an action takes
# 100s of ms), far above the time between requests of a busy node.
COALESCE = 0.02


class PoolManager:
    """Runs planner decisions until there is nothing to do; ADDs wait on its progress."""

    def __init__(
        self,
        *,
        state: NodeState,
        settings: Settings,
        limits: Limits,
        backoff: PrefixBackoff,
        executor: Ec2Executor,
        resync: Resync,
        counters: Counters,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.state = state
        self.settings = settings
        self.limits = limits
        self.backoff = backoff
        self.executor = executor
        self.resync = resync
        self.counters = counters
        self.clock = clock
        self.rng = rng
        self.last_decision: Decision | None = None
        self.waiting = 0  # ADDs waiting for an address: demand the planner sizes growth by
        # The planner's memory (last decrease, busy peaks). Not checkpointed: a restart starts
        # from PoolMemory.at_start, which gives nothing back until a surplus has lasted.
        self.memory: PoolMemory | None = None
        self.changed = asyncio.Condition()  # notified after every executed action
        self.in_flight: list[Action] = []  # started, not yet answered (the planner is told)
        self._beside: set[asyncio.Task[None]] = set()  # growths started beside a round's
        self._wake = asyncio.Event()
        self._soon: asyncio.TimerHandle | None = None  # a gathered wake-up, due
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the manager's loop and run a round now: a node that restarts with pods to
        place must not make their ADDs wait for the first timer tick."""
        self._task = asyncio.create_task(self._run(), name="pool-manager")
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the action in flight (if any)."""
        self._closing = True
        if self._soon is not None:
            self._soon.cancel()
        for task in list(self._beside):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The manager's loop (None before start)."""
        return self._task

    def wake(self) -> None:
        """Ask for a round: now if an ADD waits for an address, else within COALESCE."""
        if self.waiting:
            if self.in_flight and not self._closing and self.executor.pause() <= 0:
                self._grow_beside()
            self._wake.set()
        elif self._soon is None and not self._wake.is_set():
            self._soon = asyncio.get_running_loop().call_later(COALESCE, self._wake_now)

    def _wake_now(self) -> None:
        self._soon = None
        self._wake.set()

    def _grow_beside(self) -> None:
        """An ADD waits while an action is in flight: start what the planner decides beside it
        (a growth for what that action will not serve, or nothing)."""
        decision = self.decide()
        self.memory = decision.memory
        if decision.action is None:
            return  # the round's decision stays the one ADDs and STATUS report
        self.last_decision = decision
        self.in_flight.append(decision.action)  # before any await: the next wake-up counts it
        task = asyncio.create_task(self._beside_action(decision), name="pool-beside")
        self._beside.add(task)
        task.add_done_callback(self._beside.discard)

    async def _beside_action(self, decision: Decision) -> None:
        try:
            await self._execute(decision)
        except asyncio.CancelledError:
            raise
        except Exception:  # as a round's: the manager outlives any single failure
            log.exception("pool action beside a round failed")
            self.counters.error("pool_round")
        self.wake()  # the round that follows it (the warm target), as after a round's action

    async def _execute(self, decision: Decision) -> bool:
        """Execute a decision already counted in `in_flight`; wake the ADDs waiting on it."""
        assert decision.action is not None
        try:
            ok = await self.executor.execute(decision)
        finally:
            self.in_flight.remove(decision.action)
        async with self.changed:
            self.changed.notify_all()
        return ok

    def decide(self, *, in_flight: bool = True) -> Decision:
        """What the planner would do now, told what is in flight unless `in_flight` is False
        (a round's own view, as STATUS asks it); its memory is kept only by the manager."""
        now = self.clock()
        if self.memory is None:
            self.memory = PoolMemory.at_start(now, self.state.stats(now).total)
        return plan(
            self.state,
            self.settings.pool,
            self.limits,
            backoff=self.backoff,
            now=now,
            pending=self.waiting,
            memory=self.memory,
            in_flight=tuple(self.in_flight) if in_flight else (),
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            period = self.settings.pool_period * (0.8 + 0.4 * self.rng.random())
            tick = loop.call_later(period, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                tick.cancel()
            pause = self.executor.pause()
            if pause > 0:  # EC2 asked us to slow down: wake-ups wait too
                await asyncio.sleep(pause)
            self._wake.clear()
            if self._soon is not None:  # this round covers it
                self._soon.cancel()
                self._soon = None
            if self._closing:
                return
            try:
                if self.resync.due():
                    await self.resync.quietly()
                if self.settings.leaked_eni_cleanup and self.resync.cleanup_due():
                    await self.resync.cleanup_leaked()
                await self.run_rounds()
            except asyncio.CancelledError:
                raise
            except Exception:  # the manager must outlive any single failure
                log.exception("pool round failed")
                self.counters.error("pool_round")

    async def run_rounds(self, limit: int = 20) -> int:
        """Execute decisions until the planner has nothing to do (bounded); returns actions."""
        done = 0
        for _ in range(limit):
            decision = self.decide()
            self.last_decision = decision
            self.memory = decision.memory
            if decision.action is None:
                return done
            self.in_flight.append(decision.action)
            ok = await self._execute(decision)
            done += 1
            if not ok:
                return done
        return done
