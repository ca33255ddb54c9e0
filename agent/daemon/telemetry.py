"""The daemon's Prometheus metrics: every instrument, declared once, in exposition order.

Where it sits: the service creates one ``Telemetry`` (gauges read the live queue,
state and store through the callables it passes), the HTTP app counts webhook
deliveries into it, the job runner captures and uploads; ``GET /metrics`` renders
``registry``. docs/daemon.md "Metrics" lists the same names.
"""
from __future__ import annotations

from typing import Callable

from agent import __version__
from agent.metrics import Counter, Gauge, Histogram, Registry


class Telemetry:
    def __init__(self, *, started_at: Callable[[], float], queue_length: Callable[[], float],
                 running: Callable[[], float], open_incidents: Callable[[], float],
                 pending_uploads: Callable[[], float]):
        r = self.registry = Registry()
        self.info = r.add(Gauge("goldenhour_build_info", "Agent version (value is always 1).", ["version"]))
        self.info.set(1, __version__)
        r.add(Gauge("goldenhour_daemon_start_time_seconds", "When the daemon started (Unix time).", fn=started_at))
        self.deliveries = r.add(Counter(
            "goldenhour_webhook_deliveries_total",
            "Webhook deliveries by tracker and outcome (queued, duplicate, ignored, ping, resolved, acknowledged, "
            "not_for_host, stale, unauthorized, forbidden, malformed, too_large, unknown_tracker, "
            "method_not_allowed, queue_full, error).", ["tracker", "outcome"]))
        self.captures = r.add(Counter("goldenhour_captures_total",
                                      "Captures run by the daemon, by result (ok: a bundle was written; "
                                      "failed: none; timeout: stopped after its budget).", ["status"]))
        self.capture_s = r.add(Histogram("goldenhour_capture_duration_seconds",
                                         "Wall time of a capture job, queue wait excluded.",
                                         [1, 2, 5, 10, 20, 30, 60, 120, 300, 600]))
        self.queue_wait = r.add(Histogram("goldenhour_capture_queue_wait_seconds",
                                          "Time from webhook/API request to the capture starting.",
                                          [0.1, 0.5, 1, 5, 10, 30, 60, 300]))
        self.collector_s = r.add(Histogram("goldenhour_collector_duration_seconds",
                                           "Duration of each collector in daemon captures.",
                                           [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60], ["collector"]))
        self.collector_status = r.add(Counter("goldenhour_collector_results_total",
                                              "Collector results in daemon captures.", ["collector", "status"]))
        r.add(Gauge("goldenhour_capture_queue_length", "Capture jobs waiting.", fn=queue_length))
        r.add(Gauge("goldenhour_capture_running", "1 while a capture job runs.", fn=running))
        r.add(Gauge("goldenhour_open_incidents", "Incidents open for this host (daemon state).", fn=open_incidents))
        r.add(Gauge("goldenhour_uploads_pending", "Bundles in the local store without an upload receipt.",
                    fn=pending_uploads))
        self.uploads = r.add(Counter("goldenhour_uploads_total",
                                     "Bundles the daemon's uploader sent or failed to send.", ["outcome"]))
        self.upload_runs = r.add(Counter("goldenhour_upload_runs_total",
                                         "Uploader runs by result (ok, failed, unavailable).", ["result"]))
        self.http_events = r.add(Counter(
            "goldenhour_http_events_total",
            "Connection trouble by event (http_connection_limit, http_header_timeout, http_body_timeout, "
            "http_accept_failed, http_client_gone, http_bad_request).", ["event"]))

    def fleet(self, connected: Callable[[], float], counts: Callable[[], dict[str, int]]) -> None:
        """Fleet mode's instruments (only when a fleet is configured)."""
        self.registry.add(Gauge("goldenhour_fleet_connected",
                                "1 while the daemon is connected to the fleet's NATS servers.", fn=connected))
        self.registry.add(_LiveCounter(
            "goldenhour_fleet_events_total", "Fleet watcher events: records read, refused (did not parse), "
            "captures, duplicate, expired, capped (fleet.max_captures_per_hour), cancelled, status_<state> written.",
            ["event"], counts))


class _LiveCounter(Counter):
    """A counter whose values are read at scrape time from a ``{label: count}`` callable."""

    def __init__(self, name: str, help_: str, labels: list[str], fn: Callable[[], dict[str, int]]):
        super().__init__(name, help_, labels)
        self.fn = fn

    def render(self) -> list[str]:
        self.values = {(k,): float(v) for k, v in self.fn().items()}
        return super().render()
