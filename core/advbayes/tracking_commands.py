"""Deprecated home of the tracking commands, kept for one release: it is advbayes.tracking.commands now."""

from advbayes.moved import forward_to

__getattr__ = forward_to("advbayes.tracking_commands", "advbayes.tracking.commands")
