"""The research tooling on top of tracked runs: claims and their verdicts (claims), figures (figures) and the
findings report that puts them together (report). The run engine never imports this package."""
