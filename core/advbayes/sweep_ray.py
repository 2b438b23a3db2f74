"""Deprecated home of the Ray sweep runner, kept for one release: it is advbayes.sweep.runner now."""

from advbayes.moved import forward_to

__getattr__ = forward_to("advbayes.sweep_ray", "advbayes.sweep.runner")
