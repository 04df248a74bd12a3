"""Request streams: prompt/output lengths, arrival processes, and trace replay."""

from ascendra.workloads.spec import RequestSpec, SyntheticWorkload, TraceWorkload, Workload

__all__ = ["RequestSpec", "SyntheticWorkload", "TraceWorkload", "Workload"]
