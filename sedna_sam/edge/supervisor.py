"""A shipper that outlives its failures: :class:`SupervisedShipper` runs a
:class:`~sedna_sam.edge.shipper.Shipper` in a thread beside the frame loop of ``edge run``,
restarts it after an unexpected error and, on a stop, gives it one last bounded pass."""

from __future__ import annotations

import logging
import threading

from sedna_sam.edge.shipper import Shipper, ShipStats

log = logging.getLogger(__name__)


class SupervisedShipper:
    """A :class:`Shipper` in a thread that does not die: an unexpected error is logged,
    counted (``crashes``, ``last_error``) and the shipper restarted after a backoff (1 s
    doubling to 60 s); :meth:`stop` ends it with one last bounded pass."""

    def __init__(
        self,
        shipper: Shipper,
        poll_s: float = 2.0,
        restart_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.shipper = shipper
        self.poll_s = poll_s
        self.restart_backoff_s = restart_backoff_s
        self.max_backoff_s = max_backoff_s
        self.crashes = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._final_pass_s = 30.0
        self._thread: threading.Thread | None = None

    def start(self) -> SupervisedShipper:
        self._thread = threading.Thread(target=self.run_forever, name="shipper", daemon=True)
        self._thread.start()
        return self

    def run_forever(self) -> None:
        """Ship until :meth:`stop`, restarting after crashes (the thread's body; also usable
        in the foreground)."""
        delay = self.restart_backoff_s
        while True:
            try:
                self.shipper.run(stop=self._stop, poll_s=self.poll_s)
                break  # run() returns only once stopped
            except Exception as exc:  # noqa: BLE001 - the shipper must outlive any one failure
                self.crashes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("shipper failed (%d so far); restarting in %.0f s", self.crashes, delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.max_backoff_s)
        try:
            self.shipper.final_pass(self._final_pass_s)
        except Exception as exc:  # noqa: BLE001
            self.crashes += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("last shipping pass failed")

    def request_stop(self, final_pass_s: float = 30.0) -> None:
        """Ask it to stop after one last pass of at most ``final_pass_s`` seconds."""
        self._final_pass_s = final_pass_s
        self._stop.set()

    def stop(self, final_pass_s: float = 30.0, join_s: float | None = None) -> None:
        """:meth:`request_stop`, then wait for the thread up to ``join_s`` (default
        ``final_pass_s`` + 5)."""
        self.request_stop(final_pass_s)
        if self._thread is not None:
            self._thread.join(final_pass_s + 5 if join_s is None else join_s)

    @property
    def stats(self) -> ShipStats:
        return self.shipper.stats
