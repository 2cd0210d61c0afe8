"""The run directory's files as pydantic models: the field reference and the type every reader gets.

Every model allows extra keys at runtime, so runs written by an older or newer nlalab still load; the
test that walks a real run's keys against :func:`nlalab.rundir.reference.key_paths` is what keeps the
models complete. Keys that are data (category names, metric names, ``OVERALL``, direction names, prefix
lengths) are ``dict[str, Model]`` maps; a model whose own fixed fields sit beside data keys types those
data keys through ``__pydantic_extra__``.

``SCHEMA_VERSION`` is bumped when a key moves or changes meaning (not when one is added); a reader
migrates older files in memory (:func:`nlalab.rundir.load.migrate`) and refuses newer ones.

One module (~800 lines): the run directory's contract is the set of these models, and the field reference
(docs/run-directory.md) and the key-coverage test walk them together; splitting it would scatter one versioned
schema.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nlalab.rundir.layout import SCHEMA_VERSION  # noqa: E402  (one definition)

Num = Optional[float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _f(description: str, default: Any = None, **kw: Any) -> Any:
    if "default_factory" in kw:
        return Field(description=description, **kw)
    return Field(default, description=description, **kw)


# ----------------------------------------------------------------------------- recurring shapes


class Estimate(_Model):
    """A mean with its 95% bootstrap interval (cluster bootstrap over items where rows repeat an item)."""

    mean: Num = _f("Mean of the defined values (None when there are none).")
    lo: Num = _f("Lower end of the 95% percentile bootstrap interval.")
    hi: Num = _f("Upper end of the 95% percentile bootstrap interval.")
    n: Optional[int] = _f("Number of values the mean is over.")
    p: Num = _f("p-value where the estimate is a test statistic, else None.")
    n_clusters: Optional[int] = _f("Number of bootstrap clusters (items); None for a plain row bootstrap.")


class GapInterval(_Model):
    """A gap (real minus the mean of other items') with its bootstrap interval over items."""

    mean: Num = _f("Weighted mean over items of own score minus the mean score of other items' explanations.")
    lo: Num = _f("Lower end of the 95% bootstrap interval over items.")
    hi: Num = _f("Upper end of the 95% bootstrap interval over items.")
    n: Optional[int] = _f("Items.")
    method: Optional[str] = _f("How the interval is computed.")


class PairedGap(_Model):
    """A paired difference over items (real minus a baseline, true minus false, full minus first)."""

    mean: Num = _f("Mean paired difference over items.")
    lo: Num = _f("Lower end of the 95% paired bootstrap interval.")
    hi: Num = _f("Upper end of the 95% paired bootstrap interval.")
    n: Optional[int] = _f("Items paired.")
    p: Num = _f("Two-sided bootstrap p-value of a zero difference.")
    p_holm: Num = _f("p after Holm's correction across the family (e.g. the rungs of the ladder).")
    mdd: Num = _f("Minimum detectable difference (80% power, two-sided, this n).")
    n_boot: Optional[int] = _f("Bootstrap resamples.")
    method: Optional[str] = _f("How the interval is computed.")


class BaselineEstimate(Estimate):
    """An :class:`Estimate` of one rung of the baseline ladder, with its gap to the real pair."""

    gap_real_minus_this: Num = _f("Real pair's mean minus this rung's mean (absent on the real pair itself).")
    gap_ci: Optional[PairedGap] = _f("Paired interval and p of real minus this rung over items.")


class NullDistribution(_Model):
    """Summary of a permutation null distribution (a floor)."""

    mean: Num = _f("Mean of the statistic over the permutations.")
    lo: Num = _f("2.5th percentile of the permuted statistic.")
    hi: Num = _f("97.5th percentile of the permuted statistic.")
    n: Optional[int] = _f("Number of permutations.")


class FloorBlock(_Model):
    """The real statistic against its permutation floors, within a category and across all items."""

    real: Num = _f("The statistic with each item's own explanations/reconstructions.")
    n_rows: Optional[int] = _f("Rows (samples) that enter the statistic.")
    n_items: Optional[int] = _f("Items that enter the statistic.")
    floor_within: Optional[NullDistribution] = _f("Null when items swap explanations only inside their category.")
    floor_cross: Optional[NullDistribution] = _f("Null when items swap explanations across all items.")
    gap_within: Num = _f("real minus floor_within.mean: the item-specific part beyond the category.")
    gap_cross: Num = _f("real minus floor_cross.mean: the part beyond any explanation of the corpus.")
    p_within: Num = _f("Permutation p-value of real against the within-category null.")
    p_cross: Num = _f("Permutation p-value of real against the cross-category null.")
    floor_kind: Optional[str] = _f("What the floors average over: derangements (no item keeps its own set).")
    p_kind: Optional[str] = _f("What the p-values are computed over (full permutations) and their floor.")
    gap_within_ci: Optional[GapInterval] = _f("Per-item gap above the within-category floor, with its interval.")
    gap_cross_ci: Optional[GapInterval] = _f("Per-item gap above the cross-category floor, with its interval.")
    mdd_within: Num = _f("Minimum detectable within gap (80% power, one-sided, α / number of categories).")
    mdd_cross: Num = _f("Minimum detectable cross gap (80% power, one-sided).")
    p_within_holm: Num = _f("Per category: p_within after Holm's correction across categories.")
    alpha: Num = _f("Significance level of the verdict.")
    verdict: Optional[str] = _f("One line: evidence of item-specific content (gap, CI, p) or no evidence at "
                                "this n (minimum detectable gap); see docs/verdicts.md.")
    verdict_cross: Optional[str] = _f("Overall only: the same for content beyond chance (cross floor).")


class PermutationFloors(_Model):
    """Floors for the whole corpus and for each category."""

    overall: Optional[FloorBlock] = _f("All items.")
    per_category: dict[str, Optional[FloorBlock]] = _f("Category -> its floor block (None: too few items).",
                                                       default_factory=dict)
    correction: Optional[str] = _f("Multiple-comparison correction of the per-category verdicts.")
    alpha: Num = _f("Significance level of the verdicts.")


class FlagCounts(_Model):
    """How many generations carry each failure flag."""

    n: Optional[int] = _f("Rows counted.")
    counts: dict[str, int] = _f("Flag (truncated, missing_close_tag, empty, cjk_smell) -> rows with it.",
                                default_factory=dict)
    rates: dict[str, Num] = _f("Flag -> share of rows with it.", default_factory=dict)
    warnings: list[str] = _f("One line per flag whose rate is high enough to distort the metrics.",
                             default_factory=list)
    warning: Optional[str] = _f("The warnings joined by '; ' (None when there are none).")


class CategoryStats(_Model):
    """One category's (or OVERALL's) row counts and an Estimate per metric (the data keys)."""

    __pydantic_extra__: dict[str, Optional[Estimate]] = Field(init=False)
    DATA_KEYS: ClassVar[str] = "Metric (cos, fve_nrm, recall, ...) -> its Estimate over the category's rows."

    n: Optional[int] = _f("Rows (samples) in the category.")
    n_items: Optional[int] = _f("Items in the category.")


class StabilityEntry(_Model):
    """Within- vs cross-item variability of one metric: does the metric separate items at all?"""

    within: Num = _f("Pooled std of the metric among one item's K samples: sqrt(mean over items of the ddof=1 "
                     "variance).")
    cross: Num = _f("Std (ddof=1) of the item means across items.")
    ratio: Num = _f("within / cross (None when undefined); well below 1 means items differ more than samples.")
    n_items: Optional[int] = _f("Items that enter the comparison.")
    ddof: Optional[int] = _f("Delta degrees of freedom of both stds (1: sample variance).")


class ConfabCandidate(_Model):
    """A sample whose reconstruction is good but whose keyword recall is ~0: a possible confabulation."""

    item_id: Optional[str] = _f("Corpus item id.")
    sample: Optional[int] = _f("Sample index (0..K-1).")
    category: Optional[str] = _f("Item category.")
    prompt: Optional[str] = _f("The item's prompt.")
    explanation: Optional[str] = _f("The explanation.")
    fve_nrm: Num = _f("Its fve_nrm.")
    cos: Num = _f("Its cosine.")
    recall: Num = _f("Its keyword recall.")


class Confabulation(_Model):
    """Samples with above-threshold reconstruction and (near) zero keyword recall, per category."""

    fve_threshold: Num = _f("fve_nrm threshold (the quantile below) a candidate must reach.")
    quantile: Num = _f("Quantile of the run's fve_nrm used as threshold.")
    max_recall: Num = _f("Largest keyword recall a candidate may have.")
    n_candidates: Optional[int] = _f("Number of samples meeting both conditions.")
    per_category: dict[str, list[ConfabCandidate]] = _f("Category -> the top candidates shown.",
                                                        default_factory=dict)


class PowerMetric(_Model):
    """Minimum detectable difference between categories for one metric."""

    pooled_std: Num = _f("Pooled within-category standard deviation of item means.")
    mdd: Num = _f("Minimum detectable difference at alpha and power for n_per_group items.")
    observed_spread: Num = _f("Observed max - min of the category means.")
    spread_exceeds_mdd: Optional[bool] = _f("Whether the observed spread is larger than the mdd.")


class Power(_Model):
    """Is the corpus large enough to see a category difference?"""

    alpha: Num = _f("Two-sided test level.")
    power: Num = _f("Target power.")
    n_per_group: Optional[int] = _f("Items in the smallest category.")
    n_items_per_category: dict[str, int] = _f("Category -> items.", default_factory=dict)
    metrics: dict[str, PowerMetric] = _f("Metric -> its power numbers.", default_factory=dict)


class Settings(_Model):
    """The analysis settings results.json was computed with."""

    seed: Optional[int] = _f("Seed of sampling, bootstraps and permutations.")
    n_perm: Optional[int] = _f("Permutations per permutation floor.")
    n_boot: Optional[int] = _f("Bootstrap resamples per interval.")
    ci: Optional[str] = _f("How intervals are computed.")
    confab_fve_quantile: Num = _f("Quantile of fve_nrm a confabulation candidate must reach.")
    confab_max_recall: Num = _f("Largest keyword recall of a confabulation candidate.")
    confab_per_category: Optional[int] = _f("Candidates shown per category.")
    stopwords: Optional[str] = _f("Stopword list of keyword recall: 'shipped' or 'custom'.")


# ----------------------------------------------------------------------------- provenance (config.json)


class ModelRef(_Model):
    """Where one model of the pair came from."""

    ref: Optional[str] = _f("What the user passed: a directory or a hub id.")
    revision: Optional[str] = _f("Hub revision (None: default branch or a local directory).")
    path: Optional[str] = _f("Resolved local directory.")


class PairRecord(_Model):
    """The NLA pair a run evaluated."""

    name: Optional[str] = _f("Registered pair name (None when given by directories).")
    av: Optional[ModelRef] = _f("The activation verbalizer.")
    ar: Optional[ModelRef] = _f("The activation reconstructor.")
    target: Optional[ModelRef] = _f("The target model whose activations are explained.")
    layer: Optional[int] = _f("Layer (block output) whose activations are explained.")


class CorpusRecord(_Model):
    """The prompt corpus a run used."""

    ref: Optional[str] = _f("Corpus name or file.")
    n_items: Optional[int] = _f("Items used (after limit_per_category).")
    categories: list[str] = _f("Categories in corpus order.", default_factory=list)
    sha256: Optional[str] = _f("sha256 of the items used; runs are comparable only on equal corpora.")
    item_sha256: list[list[str]] = _f("[item id, sha256 of its id, category and prompt] per item: a rerun into the "
                                      "directory refuses an edited corpus and names the items that changed.",
                                      default_factory=list)


class DeviceInfo(_Model):
    """The hardware the run used."""

    cuda: Optional[bool] = _f("Whether CUDA was available.")
    gpus: list[str] = _f("GPU names (only when CUDA was available).", default_factory=list)
    cpu_threads: Optional[int] = _f("torch CPU threads.")


class Environment(_Model):
    """Software and hardware provenance."""

    versions: dict[str, Optional[str]] = _f("Package -> installed version (None: not installed).",
                                            default_factory=dict)
    git_commit: Optional[str] = _f("nlalab's git commit ('-dirty' when it had local changes; None outside git).")
    python: Optional[str] = _f("Python version.")
    platform: Optional[str] = _f("platform.platform().")
    device: Optional[DeviceInfo] = _f("Device information.")


class ConfigRecord(_Model):
    """config.json: what was asked for and where it ran; written when a run starts."""

    schema_version: int = _f("Run-directory schema version (0: written before versioning).", default=0)
    identity: dict[str, Any] = _f("The settings that define the run's results (a resume with other values "
                                  "is refused); a subset of config.", default_factory=dict)
    config: dict[str, Any] = _f("The full RunConfig of `nlalab run` (its fields are listed below).",
                                default_factory=dict)
    pair: Optional[PairRecord] = _f("The pair, resolved.")
    corpus: Optional[CorpusRecord] = _f("The corpus, resolved.")
    controls: list[str] = _f("The controls the run computes, in registry order.", default_factory=list)
    environment: Optional[Environment] = _f("Software and hardware.")
    started_at: Optional[str] = _f("When the run started (ISO 8601 with UTC offset).")


class CaptureRecord(_Model):
    """Where the activations were read."""

    layer: Optional[int] = _f("Layer whose block output was captured.")
    hook: Optional[str] = _f("Hook name of the capture point.")
    positions: Optional[str] = _f("Token positions captured (last: the prompt's last token).")


class Provenance(_Model):
    """config.json's records, copied into results.json so the results file stands alone."""

    config: dict[str, Any] = _f("The full RunConfig.", default_factory=dict)
    pair: Optional[PairRecord] = _f("The pair, resolved.")
    corpus: Optional[CorpusRecord] = _f("The corpus, resolved.")
    environment: Optional[Environment] = _f("Software and hardware.")
    ar_dtype: Optional[str] = _f("The AR's precision in the invocation that reconstructed, and why.")
    ar_forward: Optional[str] = _f("The AR forward in the invocation that reconstructed: shared-prefix, or "
                                   "padded and why (nlalab.reconstruct).")


# ----------------------------------------------------------------------------- scorers.<name>


class ScorerSettings(_Model):
    """Settings a scorer section was computed with (the run's own by default)."""

    seed: Optional[int] = _f("Seed of bootstraps and permutations.")
    n_perm: Optional[int] = _f("Permutations per floor.")
    n_boot: Optional[int] = _f("Bootstrap resamples per interval.")
    ci: Optional[str] = _f("How intervals are computed.")
    floor: Optional[str] = _f("How the permutation floor is computed.")


class ScorerPermutation(_Model):
    """Permutation floors of each scorer metric (same permutations as the keyword control)."""

    unit: Optional[str] = _f("What moves together under a permutation.")
    n_perm: Optional[int] = _f("Permutations.")
    n_items: Optional[int] = _f("Items permuted.")
    metrics: dict[str, PermutationFloors] = _f("Metric -> floors.", default_factory=dict)


class ScorerSection(_Model):
    """results.json scorers.<name>: a scorer added to the run by `nlalab score`."""

    scorer: Optional[str] = _f("Scorer name.")
    metrics: list[str] = _f("The scorer's metrics (columns of scores/<name>.jsonl).", default_factory=list)
    labels: dict[str, str] = _f("Metric -> display label.", default_factory=dict)
    description: dict[str, Any] = _f("The scorer's own description of its metrics.", default_factory=dict)
    n_rows: Optional[int] = _f("Rows scored.")
    n_items: Optional[int] = _f("Items scored.")
    n_candidates: Optional[int] = _f("Distinct prompts an explanation is matched against.")
    n_defined: dict[str, int] = _f("Metric -> rows where it is defined.", default_factory=dict)
    settings: Optional[ScorerSettings] = _f("Settings used.")
    per_category: dict[str, CategoryStats] = _f("Category or OVERALL -> counts and an Estimate per metric.",
                                                default_factory=dict)
    spread: dict[str, Num] = _f("Metric -> max - min of the category means.", default_factory=dict)
    permutation: Optional[ScorerPermutation] = _f("Permutation floors.")
    chance: dict[str, Num] = _f("Metric -> its analytic chance level (None where there is none).",
                                default_factory=dict)
    elapsed_s: Num = _f("Seconds the scoring took.")
    file: Optional[str] = _f("Run-relative path of the per-row scores (scores/<name>.jsonl).")
    samples_sha256: Optional[str] = _f("sha256 of the samples.jsonl scored; differs from the file now "
                                       "present when the section is stale.")
    computed_at: Optional[str] = _f("When it was computed (ISO 8601).")


# ----------------------------------------------------------------------------- control sections


class RecallPermutationSection(_Model):
    """controls.recall_permutation: keyword recall against explanations of other items (seed §4.1)."""

    unit: Optional[str] = _f("What moves together under a permutation.")
    n_perm: Optional[int] = _f("Permutations.")
    n_items: Optional[int] = _f("Items permuted.")
    overall: Optional[FloorBlock] = _f("All items.")
    per_category: dict[str, Optional[FloorBlock]] = _f("Category -> floor block.", default_factory=dict)
    warnings: list[str] = _f("The control's warnings, one line each.", default_factory=list)


class Comparison(_Model):
    """One metric on real activations beside the same metric on random vectors."""

    metric: Optional[str] = _f("Metric name.")
    real: Optional[Estimate] = _f("On the corpus activations.")
    random: Optional[Estimate] = _f("On the random Gaussian vectors.")
    diff: Num = _f("real.mean - random.mean.")


class Phrase(_Model):
    """One opening phrase and how often explanations start with it."""

    phrase: Optional[str] = _f("The first words of an explanation.")
    count: Optional[int] = _f("Explanations starting with it.")
    share: Num = _f("count / n.")


class OpeningPhrases(_Model):
    """How formulaic the explanations' openings are."""

    n: Optional[int] = _f("Explanations.")
    distinct: Optional[int] = _f("Distinct openings.")
    top: list[Phrase] = _f("Most frequent openings.", default_factory=list)
    top_share: Num = _f("Share of the most frequent opening.")


class RandomGaussianSection(_Model):
    """controls.random_gaussian: explanations of norm-matched random vectors (does the text depend on
    the activation at all?)."""

    n: Optional[int] = _f("Rows (vectors x K).")
    n_vectors: Optional[int] = _f("Random vectors.")
    ci_method: Optional[str] = _f("How the intervals are computed.")
    metrics: dict[str, Optional[Estimate]] = _f("Metric -> Estimate on the random rows.", default_factory=dict)
    comparison: list[Comparison] = _f("Real vs random, per metric.", default_factory=list)
    format_templates: dict[str, dict[str, OpeningPhrases]] = _f(
        "real|random -> first3|first5 (opening length in words) -> opening-phrase statistics.",
        default_factory=dict)
    flags: Optional[FlagCounts] = _f("Failure flags of the random rows.")
    verdict: Optional[str] = _f("One line quoting fve_nrm_seed first (fve_nrm of a random direction is "
                                "about 1 - 2/B_rv by construction).")
    warnings: list[str] = _f("The control's warnings, one line each.", default_factory=list)


class DirectionRow(_Model):
    """One injected direction and what its explanations talk about."""

    direction: Optional[str] = _f("Direction name, e.g. chat_vs_other.")
    kind: Optional[str] = _f("self, neg or cross.")
    category: Optional[str] = _f("Category the direction points to.")
    n: Optional[int] = _f("Explanations of the direction.")
    mean_hits: dict[str, Num] = _f("Lexicon category -> mean lexicon hits per explanation.", default_factory=dict)
    top: Optional[str] = _f("Category with the most mean hits (None on a tie or all zero).")
    ok: Optional[bool] = _f("Whether top is what the kind expects.")
    cos: Num = _f("Mean cosine of the reconstruction with the injected vector.")
    fve_nrm: Num = _f("Mean fve_nrm of the reconstruction of the injected vector.")


class DirectionTally(_Model):
    """How many directions of one kind came out right."""

    k: Optional[int] = _f("Directions whose top category is right.")
    n: Optional[int] = _f("Directions of this kind.")
    text: Optional[str] = _f("'k/n'.")
    directions: list[str] = _f("The directions counted.", default_factory=list)
    chance: Num = _f("Rate of right answers expected by chance, where one is defined.")
    chance_k: Num = _f("Right answers expected by chance (chance x n).")
    p: Num = _f("Exact binomial P(X >= k) at the chance rate.")
    alpha: Num = _f("Significance level of the verdict.")
    verdict: Optional[str] = _f("One line: k/n against chance with its p; see docs/verdicts.md.")


class DirectionsSection(_Model):
    """controls.directions: category-mean directions injected as activations."""

    lexicon_categories: list[str] = _f("Categories the lexicon has word lists for.", default_factory=list)
    rows: list[DirectionRow] = _f("One row per direction.", default_factory=list)
    alignment: Optional[DirectionTally] = _f("kind 'self': explanation of c's direction is about c.")
    negation_symmetry: Optional[DirectionTally] = _f("kind 'neg': explanation of -c's direction is not about c.")
    cross: Optional[DirectionTally] = _f("kind 'cross': explanation of a cross-category direction.")
    rule: Optional[str] = _f("When a direction counts as right.")
    flags: Optional[FlagCounts] = _f("Failure flags of the direction rows.")
    warnings: list[str] = _f("The control's warnings, one line each.", default_factory=list)


class ReconPermutationSection(_Model):
    """controls.recon_permutation: is reconstruction item-specific (fve_nrm etc. against floors)?"""

    unit: Optional[str] = _f("What moves together under a permutation.")
    n_perm: Optional[int] = _f("Permutations.")
    metrics: dict[str, PermutationFloors] = _f("Metric -> floors.", default_factory=dict)
    verdicts: dict[str, str] = _f("Category -> one-line verdict on fve_nrm.", default_factory=dict)
    verdict: Optional[str] = _f("One line: the overall fve_nrm verdict.")


class BaselineRung(_Model):
    """One rung of the baseline ladder: an Estimate per metric (the data keys), plus notes."""

    __pydantic_extra__: dict[str, Optional[BaselineEstimate]] = Field(init=False)
    DATA_KEYS: ClassVar[str] = "Metric (cos, mse_nrm, fve_nrm, centered_cos, recall, ...) -> its Estimate."

    note: Optional[str] = _f("How to read this rung, where needed.")
    raw_fve_of_dataset_mean: Num = _f("mean_direction only: raw fve of predicting the dataset mean (0 by "
                                      "construction; a check).")
    verdict: Optional[str] = _f("One line: does the real pair beat this rung on fve_nrm (Holm across rungs).")
    source: Optional[str] = _f("untrained_pair only: the run directory the rung was read from (--untrained-run).")


class BaselineRungs(_Model):
    """The rungs of the ladder, each scored like the real pair."""

    real_pair: Optional[BaselineRung] = _f("The real explanations (the reference of the gaps).")
    mean_direction: Optional[BaselineRung] = _f("Predicting the dataset's mean activation direction.")
    empty_explanation: Optional[BaselineRung] = _f("The AR reading an empty explanation.")
    source_text: Optional[BaselineRung] = _f("The AR reading the prompt itself.")
    blind_explanation: Optional[BaselineRung] = _f("The AR reading an explanation written without the "
                                                   "activation (the blind control's rung).")
    untrained_pair: Optional[BaselineRung] = _f("The untrained NLA of the same base model, read from its own run "
                                                "(--untrained-run), compared item by item.")


class BaselinesSection(_Model):
    """controls.baselines: what the AR reconstructs from texts that are not the explanation."""

    rungs: Optional[BaselineRungs] = _f("Rung name -> its metrics.")


class BlindCategory(_Model):
    """The blind explanations of one category: plain means per metric (the data keys)."""

    __pydantic_extra__: dict[str, Num] = Field(init=False)
    DATA_KEYS: ClassVar[str] = "Metric (cos, fve_nrm, recall) -> its mean over the category's blind rows."

    n: Optional[int] = _f("Blind rows of the category.")


class BlindSection(_Model):
    """controls.blind: explanations the target (base) model writes from the prompt text alone, in the AV's
    format, read by the AR: how much of fve_nrm needs no activation at all."""

    n: Optional[int] = _f("Blind rows (items x K).")
    rung: Optional[BaselineRung] = _f("The blind rung, scored like the real pair (also baselines' "
                                      "blind_explanation).")
    per_category: dict[str, BlindCategory] = _f("Category -> means of its blind rows.", default_factory=dict)
    verdict: Optional[str] = _f("One line: the real pair's fve_nrm against the blind explanations'.")
    generator: Optional[str] = _f("Which model wrote the blind explanations, and how.")


class PrefixPoint(_Model):
    """Reconstruction from the first L sentences of the explanation."""

    cos: Num = _f("Mean cosine.")
    fve_nrm: Num = _f("Mean fve_nrm.")
    n: Optional[int] = _f("Explanations averaged (all of them: shorter ones are carried at full length).")
    n_carried_full: Optional[int] = _f("Of those, explanations shorter than L sentences, entered with their "
                                       "full text.")


class PrefixSection(_Model):
    """controls.prefix: reconstruction from growing sentence prefixes of each item's first explanation."""

    curve: dict[str, PrefixPoint] = _f("Prefix length in sentences ('1', '2', ...) or 'full' -> its point.",
                                       default_factory=dict)
    full_minus_first: dict[str, PairedGap] = _f("Metric -> full text minus first sentence, paired over "
                                                "explanations.", default_factory=dict)
    verdict: Optional[str] = _f("One line: do the sentences after the first change the reconstruction.")
    method: Optional[str] = _f("How the curve is built (same explanations at every point).")
    warning: Optional[str] = _f("Set when the rows carried no explanation id (composition not controlled).")


class GroundingDeltas(_Model):
    """Metric changes per appended sentence."""

    true: dict[str, Optional[Estimate]] = _f("Metric -> change with a true sentence (the item's prompt).",
                                             default_factory=dict)
    false: dict[str, Optional[Estimate]] = _f("Metric -> change with another item's prompt of the same "
                                              "category.", default_factory=dict)
    false_cross: dict[str, Optional[Estimate]] = _f("Metric -> change with another category's prompt.",
                                                    default_factory=dict)
    neutral: dict[str, Optional[Estimate]] = _f("Metric -> change with a fixed neutral sentence.",
                                                default_factory=dict)
    true_minus_false: dict[str, Optional[PairedGap]] = _f("Metric -> true minus same-category false (item-level "
                                                          "claims).", default_factory=dict)
    true_minus_false_cross: dict[str, Optional[PairedGap]] = _f("Metric -> true minus cross-category false "
                                                                "(item and category signal).", default_factory=dict)


class GroundingSection(_Model):
    """controls.grounding: does the AR read claims? Change of each metric when a sentence is appended."""

    deltas: Optional[GroundingDeltas] = _f("Appended sentence -> metric changes.")
    verdict: Optional[str] = _f("One line: does the AR track item-level claims (true minus same-category false).")
    n_false_same_category: Optional[int] = _f("Items whose false sentence is from their own category (the "
                                              "others are alone in their category and use another's).")


class SeedSpread(_Model):
    """One headline number over sampling seeds."""

    mean: Num = _f("Mean over seeds.")
    std: Num = _f("Sample standard deviation over seeds.")
    min: Num = _f("Smallest value.")
    max: Num = _f("Largest value.")
    n_seeds: Optional[int] = _f("Seeds with a finite value.")
    values: list[Num] = _f("The value under each seed.", default_factory=list)
    verdict: Optional[str] = _f("One line: how much of a difference between two single-seed runs is seed noise.")


class SeedsSection(_Model):
    """controls.seeds: the headline numbers re-run with other sampling seeds."""

    seeds: list[int] = _f("The seeds (the run's own first).", default_factory=list)
    spread: dict[str, SeedSpread] = _f("Headline (cos, fve_nrm, recall, 'fve_nrm[<category>]', ...) -> spread.",
                                       default_factory=dict)


class ContrastDirectionsSection(DirectionsSection):
    """controls.contrast_directions: directions between two prompt sets (--directions), beyond the corpus."""

    sets: dict[str, int] = _f("Prompt set -> prompts captured.", default_factory=dict)
    contrasts: list[str] = _f("The contrasts (plus set vs minus set).", default_factory=list)
    sources: list[str] = _f("Files or shipped names of the contrast sets.", default_factory=list)


CONTROL_SECTIONS: dict[str, type[BaseModel]] = {
    "recall_permutation": RecallPermutationSection,
    "random_gaussian": RandomGaussianSection,
    "directions": DirectionsSection,
    "recon_permutation": ReconPermutationSection,
    "baselines": BaselinesSection,
    "blind": BlindSection,
    "prefix": PrefixSection,
    "grounding": GroundingSection,
    "seeds": SeedsSection,
    "contrast_directions": ContrastDirectionsSection,
}
"""Control name -> the model of its results.json section; a control plug-in registers or replaces its own."""


# ----------------------------------------------------------------------------- results.json


class SpreadTest(_Model):
    """Is a metric uniform across categories? The spread with a permutation test and an interval that can
    reach 0."""

    mean: Num = _f("max - min of the category means.")
    lo: Num = _f("Lower end of the simultaneous 95% interval (Bonferroni-Welch over pairwise differences).")
    hi: Num = _f("Upper end of that interval.")
    n: Optional[int] = _f("Rows.")
    n_items: Optional[int] = _f("Items.")
    n_categories: Optional[int] = _f("Categories with values.")
    estimate_bc: Num = _f("Bootstrap bias-corrected spread, clipped at 0.")
    bias: Num = _f("Bootstrap estimate of the upward bias of max - min.")
    p: Num = _f("Permutation p (category labels shuffled over items).")
    n_perm: Optional[int] = _f("Permutations.")
    null_mean: Num = _f("Mean spread under the permutation null (what equal categories show).")
    mdd: Num = _f("Minimum detectable difference between two categories (80% power).")
    alpha: Num = _f("Significance level of the verdict.")
    method: Optional[str] = _f("How p and the interval are computed.")
    verdict: Optional[str] = _f("One line: evidence that the metric differs between categories, or no "
                                "evidence at this n with the minimum detectable difference.")


class BrvRecord(_Model):
    """The B_rv fve_nrm divides by, and the candidates beside it, each named with its source."""

    value: Num = _f("The B_rv used (= results.b_rv).")
    source: Optional[str] = _f("Where it comes from.")
    choice: Optional[str] = _f("registry, own, number or file (--brv).")
    own_value: Num = _f("This run's own B_rv (its activations).")
    own_source: Optional[str] = _f("The vectors it was computed from.")
    training_value: Num = _f("The pair's training-set B_rv, where the registry knows it.")
    training_source: Optional[str] = _f("Where that constant is published.")
    low_variance: Optional[bool] = _f("B_rv below 0.1: small mse changes move fve_nrm a lot.")


class IncompleteShare(_Model):
    """Rows left out of the headline tables in one category (or all)."""

    n: Optional[int] = _f("Rows.")
    excluded: Optional[int] = _f("Rows without a closing tag, truncated or empty.")
    share: Num = _f("excluded / n.")
    by_reason: dict[str, int] = _f("Reason (missing_close_tag, truncated, empty) -> rows.", default_factory=dict)


class IncompleteRecord(_Model):
    """The closing-tag policy of the headline tables."""

    policy: Optional[str] = _f("Which rows the headline tables count.")
    score_incomplete: Optional[bool] = _f("--score-incomplete: every row counts.")
    fallback_to_all_rows: Optional[bool] = _f("No row was complete, so the headline uses every row (warned).")
    n_headline: Optional[int] = _f("Rows in the headline tables.")
    n_all: Optional[int] = _f("Rows in samples.jsonl.")
    per_category: dict[str, IncompleteShare] = _f("Category or 'all' -> excluded share.", default_factory=dict)


class DataWarning(_Model):
    """A degenerate-data finding (nlalab.study.degenerate)."""

    code: Optional[str] = _f("What kind (e.g. brv_degenerate, identical_activations, one_item_category).")
    message: Optional[str] = _f("The one-line warning shown in the terminal and reports.")
    ids: list[str] = _f("Affected item ids.", default_factory=list)


class Results(_Model):
    """results.json: every number of the run, written when the run finishes."""

    schema_version: int = _f("Run-directory schema version (0: written before versioning; loaded runs are "
                             "migrated to the current layout in memory).", default=SCHEMA_VERSION)
    b_rv: Num = _f("Mean squared norm of the normalised activations: the denominator of fve_nrm.")
    b_rv_source: Optional[str] = _f("Which vectors b_rv was computed from.")
    n_samples: Optional[int] = _f("Rows of samples.jsonl.")
    n_items: Optional[int] = _f("Corpus items.")
    k: Optional[int] = _f("Explanations sampled per item.")
    categories: list[str] = _f("Categories in corpus order.", default_factory=list)
    settings: Optional[Settings] = _f("Analysis settings.")
    mse_scale: Num = _f("Norm activations are scaled to before mse_nrm (the pair's sidecar value).")
    capture: Optional[CaptureRecord] = _f("Where the activations were read.")
    brv: Optional[BrvRecord] = _f("The B_rv choice and both candidates with their sources.")
    per_category: dict[str, CategoryStats] = _f("Category or OVERALL -> counts and an Estimate per metric, over "
                                                "the headline rows (see incomplete).", default_factory=dict)
    per_category_all_rows: dict[str, CategoryStats] = _f("The same table over every row, when the headline left "
                                                         "incomplete explanations out.", default_factory=dict)
    incomplete: Optional[IncompleteRecord] = _f("The closing-tag policy and the excluded share per category.")
    by_role: dict[str, dict[str, CategoryStats]] = _f("Several positions per item: position role (prompt, reply) "
                                                      "-> category -> the per-category table of that role's rows.",
                                                      default_factory=dict)
    data_warnings: list[DataWarning] = _f("Degenerate data, typed (the messages are in warnings too).",
                                          default_factory=list)
    spread: dict[str, Num] = _f("Metric -> max - min of the category means.", default_factory=dict)
    spread_test: dict[str, Optional[SpreadTest]] = _f("Metric (fve_nrm, recall) -> spread test (None with fewer "
                                                      "than two categories).", default_factory=dict)
    stability: dict[str, dict[str, StabilityEntry]] = _f("Category or OVERALL -> metric -> within/cross spread.",
                                                         default_factory=dict)
    confabulation: Optional[Confabulation] = _f("Confabulation candidates.")
    power: Optional[Power] = _f("Minimum detectable category differences.")
    flags: Optional[FlagCounts] = _f("Failure flags of the corpus samples.")
    warnings: list[str] = _f("Warnings of the analysis, one line each.", default_factory=list)
    controls: dict[str, Any] = _f("Control name -> its section (None: the control was switched off); the "
                                  "sections are documented below.", default_factory=dict)
    scorers: dict[str, ScorerSection] = _f("Scorer name -> section added by `nlalab score`.", default_factory=dict)
    provenance: Optional[Provenance] = _f("Copy of config.json's records.")
    timings_s_this_invocation: dict[str, Num] = _f("Stage -> seconds it took in the invocation that wrote "
                                                   "this file (resumed stages are absent).", default_factory=dict)
    verbalize_devices_this_invocation: dict[str, list[str]] = _f("Generation job -> devices it ran on.",
                                                                 default_factory=dict)
    elapsed_s_this_invocation: Num = _f("Wall seconds of the invocation that wrote this file.")

    @model_validator(mode="after")
    def _type_controls(self) -> "Results":
        # looked up at validation time, so a plug-in that replaced CONTROL_SECTIONS[name] is honoured
        typed = {}
        for name, sec in self.controls.items():
            model = CONTROL_SECTIONS.get(name)
            if model is None or not isinstance(sec, dict):
                typed[name] = sec
                continue
            try:
                typed[name] = model.model_validate(sec)
            except ValidationError as e:  # re-raised with the full key path, e.g. controls.prefix.curve
                raise ValidationError.from_exception_data(e.title, [
                    {"type": err["type"], "loc": ("controls", name, *err["loc"]), "input": err["input"],
                     **({"ctx": err["ctx"]} if "ctx" in err else {})} for err in e.errors()]) from None
        self.controls = typed
        return self

    def control(self, name: str) -> Optional[BaseModel]:
        """The typed section of control ``name`` (None when absent or switched off)."""
        sec = self.controls.get(name)
        return sec if isinstance(sec, BaseModel) else None


# ----------------------------------------------------------------------------- JSONL rows


class _GenerationRow(_Model):
    vector_index: Optional[int] = _f("Row of the vectors the explanation was generated from.")
    sample: Optional[int] = _f("Sample index (0..K-1).")
    raw_output: Optional[str] = _f("The AV's decoded output, before extraction.")
    explanation: Optional[str] = _f("The explanation extracted from raw_output.")
    n_new_tokens: Optional[int] = _f("Tokens generated.")
    truncated: Optional[bool] = _f("Flag: generation hit max_new_tokens.")
    missing_close_tag: Optional[bool] = _f("Flag: the explanation's closing tag is missing.")
    empty: Optional[bool] = _f("Flag: the explanation is empty.")
    cjk_smell: Optional[bool] = _f("Flag: a large share of CJK characters (a sign of a broken pair).")
    cjk_fraction: Num = _f("Share of CJK characters.")
    cos: Num = _f("Cosine of the reconstruction with the vector.")
    mse_nrm: Num = _f("MSE after normalising both to mse_scale.")
    fve_nrm_seed: Num = _f("1 - mse_nrm / 2: the seed's fve definition.")
    fve_nrm: Num = _f("1 - mse_nrm / b_rv: fraction of variance explained (docs/metrics.md).")
    centered_cos: Num = _f("Cosine after subtracting the corpus mean activation from both.")
    centered_mse_nrm: Num = _f("mse_nrm after subtracting the corpus mean activation.")


class SampleRow(_GenerationRow):
    """One line of samples.jsonl: one explanation of one corpus item, with its scores. Scorer columns
    may be added (extra keys are kept)."""

    item_id: Optional[str] = _f("Corpus item id.")
    category: Optional[str] = _f("Item category.")
    prompt: Optional[str] = _f("The item's prompt.")
    token_index: Optional[int] = _f("Token position whose activation was captured.")
    act_norm: Num = _f("Norm of the captured activation (before scaling).")
    recall: Num = _f("Keyword recall of the prompt's content words in the explanation (None: prompt has none).")
    hit: Optional[bool] = _f("At least one content word recalled.")
    n_words: Optional[int] = _f("Words in the explanation.")
    headline: Optional[bool] = _f("Counted in the headline tables (complete, or --score-incomplete).")
    source_item_id: Optional[str] = _f("Several positions per item: the corpus item (item_id is item@position).")
    position: Optional[int] = _f("Several positions per item: the token index of this unit.")
    role: Optional[str] = _f("Several positions per item: prompt or reply token.")
    token_text: Optional[str] = _f("Several positions per item: the token's text.")


class ControlRow(_GenerationRow):
    """One line of controls/<name>.jsonl: an explanation of a control vector, with its scores."""

    item_id: Optional[str] = _f("blind: the corpus item whose prompt the explanation was written from.")
    direction: Optional[str] = _f("directions: the direction name.")
    kind: Optional[str] = _f("directions: self, neg or cross.")
    category: Optional[str] = _f("directions: the category the direction points to; blind: the item's.")
    paired_item_id: Optional[str] = _f("random_gaussian: item whose prompt the recall is computed against.")
    recall: Num = _f("random_gaussian: keyword recall against the paired item's prompt; blind: against "
                     "the item's.")
    hit: Optional[bool] = _f("At least one content word recalled (random_gaussian, blind).")


class ScoreRow(_Model):
    """One line of scores/<name>.jsonl; the scorer's metrics are the extra columns."""

    __pydantic_extra__: dict[str, Union[float, int, None]] = Field(init=False)
    DATA_KEYS: ClassVar[str] = "Scorer metric -> its value on this row (None: undefined here)."

    item_id: Optional[str] = _f("Corpus item id.")
    sample: Optional[int] = _f("Sample index.")
    category: Optional[str] = _f("Item category.")
    rank: Optional[int] = _f("retrieval only: rank of the true prompt among the candidates.")


FILE_MODELS: dict[str, type[BaseModel]] = {
    "config.json": ConfigRecord,
    "results.json": Results,
    "samples.jsonl": SampleRow,
    "controls/<name>.jsonl": ControlRow,
    "scores/<name>.jsonl": ScoreRow,
}
"""File of the run directory -> the model of its content (of one line, for JSONL files)."""
