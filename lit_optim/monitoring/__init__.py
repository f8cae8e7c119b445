"""Optimizer diagnostics without a Trainer: update statistics per param group and spike detection."""

from lit_optim.monitoring.spikes import SpikeDetector
from lit_optim.monitoring.tracker import SpikeTracker
from lit_optim.monitoring.updates import GroupStats, second_moment_means, snapshot, update_stats

__all__ = ["GroupStats", "SpikeDetector", "SpikeTracker", "second_moment_means", "snapshot", "update_stats"]
