"""The node's life: register, follow the assignments, report.

Three loops share one ``Agent``:

* the long-poll of ``GET /v1/agent/assignments``: each answer is applied at once
  (new instances started, removed ones stopped with a drain, in the background);
  a 404 means the control plane forgot the node (restart, lapse): register again
  (so does a 404 to a status report), carrying the instances running here, which
  the control plane adopts, so that its next answer lists them and they run on;
* the safety net for a control plane that does not adopt: an instance carried in
  a registration that was neither adopted nor refused is *held*, never stopped
  for being absent from an answer, until an answer lists it (the control plane
  took it back) or the agent shuts down;
* the report loop: every ``report_every`` seconds (and right after an answer was
  applied) scrape each instance's sidecar and ``POST /v1/agent/status`` with the
  index applied, which is the ACK, the heartbeat and the load report at once;
* on shutdown every instance is stopped gracefully.

An instance being stopped is no longer reported, so its allocation is released as
soon as the control plane took it off the node; the process may still be draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from aiohttp import ClientSession

from control.agent.backoff import Backoff
from control.agent.channel import Channel, ChannelError
from control.agent.limits import Limits
from control.agent.runner import InstanceRunner
from control.nodes import AgentReport, Assignment, NodeRegistration

log = logging.getLogger("meshcontrol.agent")
POLL_WAIT = 30.0


class Agent:
    def __init__(
        self,
        channel: Channel,
        registration: NodeRegistration,
        workdir: Path,
        *,
        limits: Limits | None = None,
        report_every: float = 1.0,
        drain_delay: float = 1.0,
        stop_deadline: float = 10.0,
        restart_backoff: Backoff | None = None,
    ) -> None:
        self.channel = channel
        self.registration = registration
        self.workdir = workdir
        self.limits = limits or Limits.detect()
        self.report_every = report_every
        self.drain_delay = drain_delay
        self.stop_deadline = stop_deadline
        self.restart_backoff = restart_backoff
        self.index: int | None = None
        self.running: dict[str, InstanceRunner] = {}
        self.held: set[str] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._report_now = asyncio.Event()

    async def run(self, session: ClientSession) -> None:
        """Until cancelled; then every instance is stopped with a drain."""
        await self._register()
        reporter = asyncio.create_task(self._report_loop(session))
        try:
            await self._poll_loop()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self.shutdown()

    async def shutdown(self) -> None:
        runners = list(self.running.values())
        self.running.clear()
        self.held.clear()
        await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _register(self) -> None:
        pause = Backoff(first=0.2, cap=5.0)
        while True:
            carried = [r.assignment for r in self.running.values()]
            registration = self.registration.model_copy(update={"instances": carried})
            try:
                adoption = await self.channel.register_node(registration)
            except ChannelError as exc:
                log.warning("registering node %s failed: %s", self.registration.id, exc)
                await asyncio.sleep(pause.crashed(0.0, 0.0))
                continue
            log.info("node %s registered (limits: %s)", self.registration.id, self.limits.mode)
            self.index = None
            ids = {a.id for a in carried}
            if adoption is None:
                self.held = ids
            else:
                for instance, why in adoption.refused.items():
                    log.warning("instance %s not adopted (it will stop): %s", instance, why)
                self.held = ids - adoption.adopted - set(adoption.refused)
            if self.held:
                log.warning(
                    "the control plane did not adopt %s: kept running until it lists them",
                    ", ".join(sorted(self.held)),
                )
            return

    async def _poll_loop(self) -> None:
        pause = Backoff(first=0.2, cap=5.0)
        while True:
            try:
                answer = await self.channel.assignments(self.registration.id, self.index, POLL_WAIT)
            except ChannelError as exc:
                if exc.status == 404:
                    await self._register()
                    continue
                log.warning("assignments poll failed: %s", exc)
                await asyncio.sleep(pause.crashed(0.0, 0.0))
                continue
            pause = Backoff(first=0.2, cap=5.0)
            if answer is not None:
                index, wanted = answer
                self.apply(wanted)
                self.index = index
                self._report_now.set()

    def apply(self, wanted: list[Assignment]) -> None:
        """Start what is new, stop what is gone (in the background); held instances
        run on (see the module's docstring)."""
        ids = {a.id for a in wanted}
        self.held -= ids
        for instance in [i for i in self.running if i not in ids and i not in self.held]:
            runner = self.running.pop(instance)
            log.info("stopping %s", instance)
            task = asyncio.create_task(runner.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for assignment in wanted:
            if assignment.id in self.running:
                continue
            log.info("starting %s (%s)", assignment.id, assignment.service)
            runner = InstanceRunner(
                assignment,
                self.registration,
                self.channel,
                self.limits,
                self.workdir,
                drain_delay=self.drain_delay,
                stop_deadline=self.stop_deadline,
                backoff=Backoff(**vars(self.restart_backoff)) if self.restart_backoff else None,
            )
            self.running[assignment.id] = runner
            runner.start()

    def status(self) -> AgentReport:
        return AgentReport(
            node=self.registration.id,
            index=self.index or 0,
            instances=[r.report() for r in self.running.values()],
        )

    async def _report_loop(self, session: ClientSession) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.report_every)
            self._report_now.clear()
            await asyncio.gather(*(r.scrape(session) for r in list(self.running.values())))
            try:
                await self.channel.report(self.status())
            except ChannelError as exc:
                if exc.status == 404:
                    # The control plane forgot the node (restart, lapse); registering
                    # wakes the long-poll, which then learns the node's assignments.
                    await self._register()
                else:
                    log.warning("status report failed: %s", exc)
