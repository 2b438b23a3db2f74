"""This plugin's tests run from its own directory too: the fixtures come from advbayes.testing, not this repository."""

from advbayes.testing import batched_draws, isolated_cwd, plugin_site, store  # noqa: F401 - found by name
