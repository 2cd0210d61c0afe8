"""The run directory: nlalab's contract between the study and everything after it.

``layout`` names the files, ``io`` writes and reads them safely (atomic files, torn-tail-safe JSONL,
one lock), ``schema`` types them (pydantic, with ``schema_version``), ``load`` returns a typed run.
report/, scorers/ and compare read runs only through this package.
"""
