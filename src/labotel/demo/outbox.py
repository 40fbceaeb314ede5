"""The outbox relay: an asyncio loop in its own thread publishes pending events.

The "broker" is simulated: publishing takes a few milliseconds and fails with a
configurable probability, so the failed/pending gauges move like a real relay's.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from labotel.demo.store import Store

log = logging.getLogger("labend.outbox")
MAX_ATTEMPTS = 5


class BrokerUnavailable(Exception):
    pass


class OutboxRelay:
    def __init__(self, store: Store, meter: Meter, failure_rate: float = 0.05,
                 poll_interval: float = 0.5):
        self.store = store
        self.failure_rate = failure_rate
        self.poll_interval = poll_interval
        self.published = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        meter.create_observable_gauge("outbox.pending_events", [self._pending], unit="{event}",
                                      description="Outbox events not yet published")
        meter.create_observable_gauge("outbox.failed_events", [self._failed], unit="{event}",
                                      description="Outbox events that exhausted their retries")

    def _pending(self, _: CallbackOptions):
        yield Observation(self.store.outbox_counts()["pending"])

    def _failed(self, _: CallbackOptions):
        yield Observation(self.store.outbox_counts()["failed"])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        while not self._stop.is_set():
            for event in await asyncio.to_thread(self.store.pending_events):
                await self._publish(event)
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_interval)
            except TimeoutError:
                pass

    async def _publish(self, event: dict) -> None:
        try:
            await asyncio.sleep(random.uniform(0.001, 0.005))  # the broker round trip
            if random.random() < self.failure_rate:
                raise BrokerUnavailable("broker did not acknowledge")
        except BrokerUnavailable as error:
            self.store.mark_attempt_failed(event["id"], str(error), MAX_ATTEMPTS)
            return
        self.store.mark_published(event["id"])
        self.published += 1
