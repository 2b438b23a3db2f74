"""Deprecated home of advbayes.lab.figures, kept for one release."""

from advbayes.moved import forward_to

__getattr__ = forward_to("advbayes.figures", "advbayes.lab.figures")
