"""Deprecated home of advbayes.lab.claims, kept for one release."""

from advbayes.moved import forward_to

__getattr__ = forward_to("advbayes.claims", "advbayes.lab.claims")
