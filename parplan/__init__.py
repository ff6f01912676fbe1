"""parplan: operator-level parallelism planning for PyTorch pipelines."""

from parplan.costs import PipelineCosts
from parplan.errors import ParplanError
from parplan.schedule import Action, Kind, Schedule

__version__ = "0.1.0"

__all__ = ["Action", "Kind", "ParplanError", "PipelineCosts", "Schedule", "__version__"]
