"""Pure analysis of an ``nlalab run``: per-sample rows -> results.json content and report.md (no model code)."""
