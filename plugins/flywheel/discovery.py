"""Step 1, discover: which workloads have enough fresh records in the run's window."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WorkloadDecision:
    workload_id: str
    n_records: int
    selected: bool
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def decide_workloads(
    counts: dict[str, int], *, min_records: int, requested: list[str] | None = None, usable: bool = True,
) -> list[WorkloadDecision]:
    """One decision per workload seen in the window (and per requested workload never seen).

    ``counts`` are usable records (distinct normalized requests of valid records) when the log
    source can count them (``usable``, the PostgreSQL store), else raw records (Elasticsearch's
    terms aggregation); curation then checks the minimum again on what it actually kept.

    ``requested`` (the on-demand Params form) restricts the run to those workloads; the others are
    recorded as skipped with the reason, so the run's report says why a workload is missing.
    """
    wanted = set(requested) if requested else None
    decisions = []
    for workload_id in sorted(set(counts) | (wanted or set())):
        n = counts.get(workload_id, 0)
        if wanted is not None and workload_id not in wanted:
            decisions.append(WorkloadDecision(workload_id, n, False, "not among the requested workloads"))
        elif n < min_records:
            decisions.append(
                WorkloadDecision(
                    workload_id, n, False,
                    f"only {n} {'usable ' if usable else ''}records in the window, fewer than min_records={min_records}"
                )
            )
        else:
            decisions.append(WorkloadDecision(workload_id, n, True))
    return decisions
