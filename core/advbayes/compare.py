"""Deprecated home of `advbayes compare`'s table, kept for one release: it is advbayes.tracking.compare now."""

from advbayes.moved import forward_to

__getattr__ = forward_to("advbayes.compare", "advbayes.tracking.compare")
