"""A deterministic simulator of a celery-fork-scheduler cluster (issue 13).

Several real ``Scheduler`` replicas run in one process against a real ``redis-server`` that
runs the production Lua scripts on virtual time; faults, operator edits and policies are drawn
from a seed, and a checker verifies the promises of docs/guarantees.md. See
docs/testing-the-scheduler.md and ``python scripts/simulate.py --help``.
"""
