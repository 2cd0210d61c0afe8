"""Shared helpers of the run tests (a plain module: pytest puts this folder on sys.path)."""

from nlalab.study.config import RunConfig

# a small but complete study: every stage and control runs, in seconds on fixture pairs
FAST = dict(k=2, max_new_tokens=12, n_random=4, n_perm=200, n_boot=200, limit_per_category=4, progress=False)
# keys of results.json that describe one invocation, not the run
PER_INVOCATION = ("provenance", "elapsed_s_this_invocation", "timings_s_this_invocation",
                  "verbalize_devices_this_invocation", "_summary")


def cfg_for(pair, out, **kw) -> RunConfig:
    return RunConfig(av=str(pair.av), ar=str(pair.ar), target=str(pair.target), out=str(out), **{**FAST, **kw})


def stable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in PER_INVOCATION}
