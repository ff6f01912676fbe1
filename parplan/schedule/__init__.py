"""Schedule IR, simulation and validation."""

from parplan.schedule.ir import Action, Kind, Schedule

__all__ = ["Action", "Kind", "Schedule"]
