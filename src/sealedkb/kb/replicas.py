"""Singleton jobs of a serving replica (``serve``): key housekeeping, alarm
evaluation and automated snapshots (with their retention) each run on the one
replica holding the job's PostgreSQL advisory lock (``store/jobs.py``); the other
replicas serve requests and take a job over within ``4 x job_leader_poll``
seconds when its holder dies."""

from __future__ import annotations

from dataclasses import dataclass, field

from sealedkb.audit.s3 import CheckpointArchive
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import start_scheduler
from sealedkb.keys.lifecycle import Housekeeper
from sealedkb.monitoring import alarms
from sealedkb.objectstore import Bucket, BucketConfig
from sealedkb.snapshots import SnapshotScheduler
from sealedkb.store.jobs import Leadership, default_replica_id

__all__ = [
    "JOBS",
    "ReplicaJobs",
    "attach_checkpoint_archive",
    "start_replica_jobs",
]

HOUSEKEEPING = "housekeeping"
ALARMS = "alarms"
SNAPSHOTS = "snapshots"
JOBS = (HOUSEKEEPING, ALARMS, SNAPSHOTS)


@dataclass
class ReplicaJobs:
    replica: str
    housekeeper: Housekeeper
    evaluator: alarms.Evaluator | None
    snapshots: SnapshotScheduler | None
    leaderships: list[Leadership] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the loops, then give up the locks (another replica takes them at once)."""
        try:
            if self.evaluator is not None:
                self.evaluator.stop()
            if self.snapshots is not None:
                self.snapshots.stop()
            self.housekeeper.stop()
        finally:
            for lead in self.leaderships:
                lead.stop()


def start_replica_jobs(kb: KnowledgeBase) -> ReplicaJobs:
    """Start this replica's candidacy for every singleton job, and the job loops
    (each round runs only while this replica leads that job)."""
    settings = kb.settings
    replica = settings.replica_id or default_replica_id()

    def lead(job: str) -> Leadership:
        return Leadership(
            kb.db,
            job,
            replica,
            poll=settings.job_leader_poll,
            allow_insecure=settings.database_allow_insecure,
        ).start()

    attach_checkpoint_archive(kb)
    leaderships = [lead(job) for job in JOBS]
    by_job = dict(zip(JOBS, leaderships, strict=True))
    every = settings.audit_checkpoint_interval
    housekeeper = Housekeeper(kb.keys, kb.audit, every, by_job[HOUSEKEEPING]).start()
    evaluator = alarms.start_evaluator(kb, by_job[ALARMS])
    snapshots = start_scheduler(kb, by_job[SNAPSHOTS])
    return ReplicaJobs(replica, housekeeper, evaluator, snapshots, leaderships)


def attach_checkpoint_archive(kb: KnowledgeBase) -> CheckpointArchive | None:
    """Archive each new signed audit checkpoint in SEALEDKB_AUDIT_CHECKPOINT_BUCKET
    (write-once; Object Lock retention when the bucket has it). None if not set."""
    s = kb.settings
    if not s.audit_checkpoint_bucket:
        return None
    bucket = Bucket(
        BucketConfig(
            s.audit_checkpoint_bucket,
            s.audit_checkpoint_prefix,
            endpoint_url=s.s3_endpoint_url,
            region=s.s3_region,
        )
    )
    archive = CheckpointArchive(bucket, s.audit_checkpoint_retention_days)
    kb.audit.archive = archive
    return archive
