"""Reports a researcher can paste into a paper: cross-run comparison (seed §3.2), HTML report with plots.

- :func:`nlalab.report.compare.compare_runs` + ``to_markdown`` / ``to_csv`` / ``to_terminal`` / ``to_json``;
- :func:`nlalab.report.html.write_report`: one self-contained HTML file plus ``plots/*.png|svg``.

Submodules are imported lazily (matplotlib is only needed for the HTML report).
"""

from __future__ import annotations

__all__ = ["compare_runs", "write_report"]


def compare_runs(*args, **kwargs):
    from nlalab.report.compare import compare_runs as f

    return f(*args, **kwargs)


def write_report(*args, **kwargs):
    from nlalab.report.html import write_report as f

    return f(*args, **kwargs)
