"""ClusterNS (djz233/ClusterNS): the objective and its clustering state (pure functions in clustering.py)."""
from clusterns.objectives.clusterns.objective import ClusterNSArguments, ClusterNSObjective

__all__ = ["ClusterNSArguments", "ClusterNSObjective"]
