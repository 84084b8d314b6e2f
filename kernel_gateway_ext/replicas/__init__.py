"""Gateway replicas sharing one store: who lives (leases), where each kernel and session lives
(its home replica), forwarding a request to it, and taking over a dead replica's kernels."""
from .membership import Replicas

__all__ = ["Replicas"]
