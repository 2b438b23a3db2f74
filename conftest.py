"""Shared fixtures, the same ones plugin authors get from advbayes.testing: an isolated working directory (autouse),
a temporary MLflow store and a site directory for installable fixture plugins."""

from advbayes.testing import batched_draws, isolated_cwd, plugin_site, store  # noqa: F401 - pytest finds fixtures by name
