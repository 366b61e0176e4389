"""Housekeeping: expire old query results, fail jobs stuck past their time limit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.db.jobs import transition_job
from shared.db.models import Job, QueryResult


def expire_query_results(session: Session, older_than: datetime) -> int:
    """Delete query answers created before ``older_than`` (their jobs stay, without results)."""
    result = session.execute(delete(QueryResult).where(QueryResult.created_at < older_than))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def fail_stuck_jobs(session: Session, started_before: datetime) -> int:
    """Jobs still running although they started before ``started_before`` end as failed."""
    ids = list(session.scalars(select(Job.id).where(Job.status == "running", Job.started_at < started_before)))
    for job_id in ids:
        transition_job(session, job_id, "failed", error_code="stuck",
                       error_message="the job ran past its time limit and no worker finished it")
    return len(ids)
