"""Iteration-latency models: the analytic roofline, measured profiles, and calibrations."""

from ascendra.perf.calibration import latency_model

__all__ = ["latency_model"]
