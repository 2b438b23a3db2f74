"""Deprecated home of advbayes.lab.report, kept for one release."""

from advbayes.moved import forward_to

__getattr__ = forward_to("advbayes.report", "advbayes.lab.report")
