"""The alert rules of ops/prometheus/rules/orderfleet.rules.yml, evaluated from the database
for stores that run no Prometheus (``orderfleet alerts``).

Same names, thresholds (the settings' defaults are the rule file's numbers; a test holds them
together) and runbook lines. Where Prometheus waits (``for: 3d``), this reads the history
instead: SLA attainment is computed for each of the last three days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from config.settings import Settings
from domain.alerts import open_alerts, raise_alert, resolve_alert
from domain.observability import daily_sla, snapshot

KIND_PREFIX = "rule:"

RUNBOOKS: dict[str, str] = {
    "OrderfleetSlaAttainmentLow": (
        "Audit the process: `orderfleet report` (handling-time variance, exception heatmap), "
        "then the stage with the longest latency."),
    "OrderfleetStatusLag": (
        "Check the workers (Flower), the stage's queue (celery_queue_length) and `orderfleet "
        "alerts --kind status_lag`."),
    "OrderfleetTrackingSilent": (
        "A person asks the carrier about each parcel: `orderfleet alerts --kind "
        "tracking_silent` lists them."),
    "OrderfleetReservationFailureRate": (
        "The SKU is frozen and its orders held: fix the stock feed, then `orderfleet sku "
        "unfreeze SKU`."),
    "OrderfleetExceptionRateUp": (
        "Escalate. The exception heatmap (`orderfleet report`, /ops/health) shows the stage "
        "and hour; payment gateways and stock sync cause most."),
    "OrderfleetCostShareHigh": (
        "Rework the process: review carrier services and rate shopping "
        "(delivery_promise_days, rate_shop_across_carriers)."),
    "OrderfleetBacklogOld": (
        "Add workers (KEDA, `docker compose up --scale worker=N`), check `orderfleet "
        "breakers` and the surge stage."),
    "OrderfleetWorkersDown": (
        "Orders wait in their queues (nothing is lost): start workers, read their logs, check"
        " Redis."),
    "OrderfleetEmailUncertain": (
        "Look each one up in the mail server's log (`orderfleet noncore list --outcome "
        "uncertain`), then `orderfleet noncore settle` (it went out) or `resend`."),
}


@dataclass(frozen=True)
class Finding:
    rule: str
    key: str  # what it is about: "fleet", a SKU
    severity: str
    message: str

    @property
    def runbook(self) -> str:
        return RUNBOOKS[self.rule]


def evaluate(session: Session, settings: Settings, now: datetime,
             workers_up: int | None) -> list[Finding]:
    """Every rule that fires now. ``workers_up`` is None when the broker was not asked."""
    snap = snapshot(session, settings, now)
    out: list[Finding] = []
    days = daily_sla(session, settings, now, 3)
    ratios = [sla.ratio for _, sla in days]
    if all(r is not None and r < settings.sla_attainment_alert for r in ratios):
        shown = ", ".join(f"{r:.1%}" for r in ratios if r is not None)
        out.append(Finding("OrderfleetSlaAttainmentLow", "fleet", "warning",
                           f"SLA attainment below {settings.sla_attainment_alert:.0%} for 3 "
                           f"days ({shown})"))
    if snap.status_lagging:
        out.append(Finding("OrderfleetStatusLag", "fleet", "warning",
                           f"{snap.status_lagging} orders have not moved for over "
                           f"{settings.status_lag_alert_s / 60:.0f} min (longest "
                           f"{snap.status_lag_s / 60:.0f} min)"))
    if snap.tracking_silent:
        out.append(Finding("OrderfleetTrackingSilent", "fleet", "warning",
                           f"{snap.tracking_silent} shipments silent for over "
                           f"{settings.tracking_silent_alert_s / 3600:.0f} h"))
    for sku, (failed, attempts) in sorted(snap.sku_failures.items()):
        if failed / attempts > settings.sku_freeze_failure_rate:
            out.append(Finding("OrderfleetReservationFailureRate", sku, "warning",
                               f"SKU {sku}: {failed} of its last {attempts} reservations "
                               f"failed ({failed / attempts:.1%})"))
    exc = snap.exceptions
    if (exc.rate is not None and exc.previous_rate is not None and exc.exceptions >= 10
            and exc.rate > settings.exception_rise_alert * exc.previous_rate):
        out.append(Finding("OrderfleetExceptionRateUp", "fleet", "critical",
                           f"exceptions per order {exc.rate:.1%} in the last day, "
                           f"{exc.previous_rate:.1%} the day before"))
    share = snap.cost_7d.share
    if share is not None and share > settings.cost_share_alert:
        out.append(Finding("OrderfleetCostShareHigh", "fleet", "warning",
                           f"fulfilment cost {share:.1%} of GMV over 7 days "
                           f"({snap.cost_7d.labels} labels)"))
    if snap.backlog_oldest_s > settings.backlog_age_alert_s:
        out.append(Finding("OrderfleetBacklogOld", "fleet", "warning",
                           f"the oldest order in the pipeline waits for "
                           f"{snap.backlog_oldest_s / 60:.0f} min"))
    if workers_up == 0:
        out.append(Finding("OrderfleetWorkersDown", "fleet", "critical",
                           "no Celery worker answers a ping"))
    if snap.emails_uncertain:
        out.append(Finding("OrderfleetEmailUncertain", "fleet", "warning",
                           f"{snap.emails_uncertain} e-mails may or may not have gone out "
                           "(the connection broke while the mail server took them)"))
    return out


def apply_findings(session: Session, findings: list[Finding]) -> tuple[int, int]:
    """Raise an alert per finding (once while open) and resolve rule alerts that cleared.

    Returns (raised, resolved)."""
    raised = sum(
        raise_alert(session, KIND_PREFIX + f.rule, f.key, f.message, severity=f.severity,
                    detail={"runbook": f.runbook})
        for f in findings)
    firing = {(KIND_PREFIX + f.rule, f.key) for f in findings}
    resolved = sum(resolve_alert(session, a.kind, a.key) for a in open_alerts(session)
                   if a.kind.startswith(KIND_PREFIX) and (a.kind, a.key) not in firing)
    return raised, resolved
