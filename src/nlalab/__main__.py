"""``python -m nlalab`` = the ``nlalab`` command (useful where the package is on PYTHONPATH, not installed)."""

from nlalab.cli import main

main()
