"""Build a study's folder from its MLflow runs and log it on the sweep's parent run."""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from hashtune.data.protocol import PROTOCOLS
from hashtune.metric_names import SELECTION_METRIC
from hashtune.paths import atomic_write_text
from hashtune.report.importance import FANOVA_MAX_TRIALS, parameter_importances, rebuild_study
from hashtune.report.k_sensitivity import k_findings, k_versus_best, k_versus_best_markdown
from hashtune.report.pareto_study import pareto_csv, pareto_markdown, pareto_study, parse_objectives, plot_pareto
from hashtune.report.plots import plot_forest, plot_importance, plot_search_progress, plot_sensitivity
from hashtune.report.runs import Study, TrialRun, load_study
from hashtune.report.sensitivity import continuous_sensitivity, continuous_table, k_bits_table
from hashtune.report.tables import (
    METRIC,
    ablation_table,
    claim_rows,
    claims_markdown,
    is_crossed,
    paper_directions,
    replicate_key,
    variance_table,
)
from hashtune.tracking import TAG, display_uri
from hashtune.train.outputs import plot_pr_curves, read_pr_curve

__all__ = ["build_report", "ARTIFACT_PATH"]

ARTIFACT_PATH = "report"
DELTA = 0.02
"""Equivalence margin of the claims' verdicts (mAP): a difference inside ±DELTA is practically none."""


class _StudyFolder:
    """The study folder being written: its files, in order, and the README's note for each."""

    def __init__(self, out: Path) -> None:
        self.out, self.written, self.notes = out, [], {}
        out.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, text: str, note: str) -> None:
        atomic_write_text(self.out / name, text)
        self.add(self.out / name, note)

    def add(self, path: Path, note: str) -> None:
        self.written.append(path)
        self.notes[path.name] = note


def build_report(
    client,
    experiment: str,
    out_dir: str | Path,
    *,
    metric: str = SELECTION_METRIC,
    reference: str | None = None,
    log_to_parent: bool = True,
    objectives: tuple[tuple[str, str], ...] | None = None,
) -> list[Path]:
    """Write every table, plot and the folder's README.md; returns the files written.

    Args:
        client: an `mlflow.MlflowClient` on the sweep's tracking store.
        experiment: the sweep's experiment name.
        out_dir: the study folder (created).
        metric: the selection metric (best runs, importance objective, search progress).
        reference: the variant the ablation differences are taken against; None: the sweep's (the first variant its
            space lists, recorded on its parent run; `full` for sweeps recorded before it was). A replicated sweep's
            schedule always compares with its own reference.
        log_to_parent: also log the folder as artifacts (`report/`) of the newest sweep parent run.
        objectives: (metric, mode) pairs of a Pareto study; None: the sweep's own (a multi-objective space's,
            recorded on its parent run), else no front.
    """
    logging.getLogger("optuna").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    study = load_study(client, experiment)
    folder = _StudyFolder(Path(out_dir))
    directions = _ablation_files(folder, study, _reference(study, reference))
    findings = _sensitivity_files(folder, study)
    _importance_files(folder, study, metric)
    _pareto_files(folder, study, objectives)
    pr = _best_pr_curves(client, study, metric)
    if pr:
        folder.add(
            plot_pr_curves(
                pr,
                folder.out / "pr_curves.png",
                title=f"test PR by Hamming radius: best run (by {metric}) of each group",
            ),
            f"precision-recall curves of the best run by `{metric}` of each variant (or code length)",
        )
    folder.add(
        plot_search_progress(study.runs, metric, folder.out / "search_progress.png"),
        f"each trial's last `{metric}` in start order and the best finished so far; beside it, the best against "
        "cumulative CPU-hours",
    )
    folder.write(
        "README.md", _readme(study, metric, folder.notes, directions, _sweep_command(client, study), findings), ""
    )
    if log_to_parent and study.parent_run_ids:
        client.log_artifacts(study.parent_run_ids[0], str(folder.out), artifact_path=ARTIFACT_PATH)
    return folder.written


def _pareto_files(folder: _StudyFolder, study: Study, objectives: tuple[tuple[str, str], ...] | None) -> None:
    recorded = study.parent_params.get("objectives")
    objectives = objectives or (parse_objectives(recorded) if recorded else None)
    if not objectives:
        return
    front = pareto_study(study.runs, objectives)
    folder.write("pareto.md", pareto_markdown(front), "the non-dominated trials by the objectives, and the answers")
    folder.write("pareto.csv", pareto_csv(front), "the same trials, one row each")
    folder.add(plot_pareto(front, folder.out / "pareto.png"), "the front against each cost objective")


def _reference(study: Study, given: str | None) -> str:
    """The one reference rule: a replicated sweep's schedule's, else the one given, else the sweep's recorded one."""
    recorded = study.parent_params
    return recorded.get("replicates.reference") or given or recorded.get("reference") or LEGACY_REFERENCE


LEGACY_REFERENCE = "full"
"""The reference of a sweep whose parent run does not record one (before 2026-12-02): the shipped spaces' first."""


def _ablation_files(folder: _StudyFolder, study: Study, reference: str) -> list[str]:
    """ablation.md/.csv when the runs carry variants; returns the papers' directions in words."""
    ablation = ablation_table(study.runs, reference)
    if not ablation:
        return []
    delta, alpha, design = _claims_level(study)
    directions, claims = (
        paper_directions(ablation, delta=delta, alpha=alpha),
        claim_rows(ablation, delta=delta, alpha=alpha),
    )
    verdicts = (
        f"\n## The papers' claims (paired by seed, {100 * (1 - alpha):.4g}% CI, equivalence margin "
        f"±{delta:g})\n\n{design}" + claims_markdown(claims, delta)
        if claims
        else ""
    )
    folder.write(
        "ablation.md",
        ablation.to_markdown() + verdicts + "".join(f"\n- {s}" for s in directions) + ("\n" if directions else ""),
        f"ablation table: {METRIC} mean ± 95% t-interval over seeds per variant and bits (best per column in bold), "
        f"each variant's paired difference to `{ablation.reference}`, and each claim's verdict (holds, reversed, "
        "equivalent, inconclusive) with the effect the seeds could detect and the seeds a ±delta interval needs",
    )
    if claims:
        folder.add(
            plot_forest(claims, delta, folder.out / "ablation.png"),
            f"forest plot: each claim's paired difference and {100 * (1 - alpha):.4g}% CI, 0 and ±delta, verdict and n",
        )
    folder.write("ablation.csv", ablation.to_csv(), "the same, one row per (variant, bits), with per-seed values")
    split = variance_table(study.runs)
    if split is not None:
        folder.write(
            "variance_split.md",
            split + "\n",
            "seed noise split between the data split and the training seed (crossed seeds)",
        )
    return directions


def _claims_level(study: Study) -> tuple[float, float, str]:
    """(delta, alpha, a sentence on the design): a replicated sweep's per-look level, else 95% and `DELTA`."""
    params = study.parent_params
    if "replicates.alpha_per_look" not in params:
        return DELTA, 0.05, ""
    alpha, looks = float(params["replicates.alpha_per_look"]), int(params["replicates.looks"])
    design = (
        f"Seeds were added adaptively (`replicates: {params['replicates.spec']}`): after each round an arm whose CI "
        f"excluded 0 or lay inside ±delta was settled, the others got more seeds. Every look tests at alpha / L = "
        f"{params['replicates.alpha']} / {looks} = {alpha:.4g} (Bonferroni over the L planned looks), so the intervals "
        f"below are at that level. {_schedule_state(study)}\n\n"
    )
    return float(params["replicates.delta"]), alpha, design


def _schedule_state(study: Study) -> str:
    state = study.parent_tags.get(f"{TAG}replicates", "not started")
    if state == "done":
        return "The schedule is done: an `inconclusive` claim ran to `max` seeds (or the budget)."
    return (
        f"The schedule was stopped in {state} (parent run status {study.parent_tags.get(f'{TAG}status', 'unknown')}): "
        "these verdicts are valid at this look, and `--resume` continues the schedule."
    )


def _sensitivity_files(folder: _StudyFolder, study: Study) -> list[str]:
    """The K x bits table and the binned curves of continuous parameters, where the runs vary them; returns
    TransHash Tab. 3's findings in words."""
    k_table = k_bits_table(study.runs)
    findings: list[str] = []
    if k_table:
        folder.write(
            "sensitivity_k.md",
            k_table.to_markdown(),
            f"K x bits (TransHash Tab. 3 shape): mean {METRIC}; `-` infeasible bit allocation, blank not run",
        )
        folder.write("sensitivity_k.csv", k_table.to_csv(), "the same with n and 95% intervals")
        versus = k_versus_best(study.runs, delta=DELTA)
        findings = k_findings(study.runs, versus, delta=DELTA)
        if versus:
            folder.write(
                "sensitivity_k_vs_best.md",
                k_versus_best_markdown(versus, DELTA) + "".join(f"\n- {s}" for s in findings) + "\n",
                f"every K against its code length's best K (chosen on `{SELECTION_METRIC}`): paired {METRIC} "
                "difference and CI at 95% / m "
                "(Bonferroni over the m comparisons of a code length), "
                "higher / lower / equivalent / inconclusive, the effect the seeds could detect and the seeds a ±delta "
                "interval needs",
            )
    curves = continuous_sensitivity(study.runs)
    if not curves:
        return findings
    markdown, csv_text = continuous_table(curves)
    folder.write(
        "sensitivity_continuous.md", markdown, f"{METRIC} by quantile bins of each continuous parameter, per bits"
    )
    folder.write("sensitivity_continuous.csv", csv_text, "the same with 95% intervals")
    for param in dict.fromkeys(curve.param for curve in curves):
        path = plot_sensitivity(curves, param, folder.out / f"sensitivity_{param.replace('.', '_')}.png")
        folder.add(path, f"{METRIC} against `{param}`: every finished run, binned means ± 95% CI")
    return findings


def _importance_files(folder: _StudyFolder, study: Study, metric: str) -> None:
    rebuilt = rebuild_study(study.runs, metric)
    importances = parameter_importances(rebuilt)
    if not importances:
        return
    ranked = len(rebuilt.trials)
    sampled = (
        f"; fANOVA on a seeded sample of {FANOVA_MAX_TRIALS} of its {ranked}" if ranked > FANOVA_MAX_TRIALS else ""
    )
    rows = [f"{name},{param},{value:.6f}" for name, values in importances.items() for param, value in values.items()]
    folder.write(
        "importance.csv",
        "evaluator,parameter,importance\n" + "\n".join(rows) + "\n",
        f"parameter importance for `{metric}` (Optuna fANOVA and PED-ANOVA on a study rebuilt from the finished "
        f"runs{sampled})",
    )
    folder.add(plot_importance(importances, folder.out / "importance.png"), "the same as bar charts")


def _best_pr_curves(client, study: Study, metric: str) -> dict[str, dict[str, list[float]]]:
    """The test PR curve (`pr_curve.csv` artifact) of the best finished run per variant, else per bits."""
    groups: dict[str, TrialRun] = {}
    for run in study.finished:
        if metric not in run.metrics:
            continue
        label = run.variant or f"{run.bits} bits"
        if label not in groups or run.metrics[metric] > groups[label].metrics[metric]:
            groups[label] = run
    curves = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, run in groups.items():
            if "pr_curve.csv" not in {artifact.path for artifact in client.list_artifacts(run.run_id)}:
                continue
            local = client.download_artifacts(run.run_id, "pr_curve.csv", scratch)
            curves[f"{label} (test mAP {run.metrics[METRIC]:.3f})"] = read_pr_curve(local)
    return curves


def _sweep_command(client, study: Study) -> str | None:
    """The command that ran the sweep, rebuilt from its parent run's params (space, name, base overrides)."""
    if not study.parent_run_ids:
        return None
    params = client.get_run(study.parent_run_ids[0]).data.params
    overrides = " ".join(
        f"{key.removeprefix('base.')}={value}" for key, value in sorted(params.items()) if key.startswith("base.")
    )
    name = "" if params.get("space") == study.experiment_name else f" --name {study.experiment_name}"
    return f"python -m hashtune.sweep --space {params.get('space', '?')}{name}{' ' + overrides if overrides else ''}"


def _protocol(study: Study) -> str:
    """The protocol row the study used (the README's protocol table), and where the two tie rules disagree."""
    configs = {
        (run.config.data.name, run.config.data.val_per_class, run.config.eval.topk, run.config.eval.ties)
        for run in study.finished
    }
    lines = []
    for name, val_per_class, topk, ties in sorted(configs, key=str):
        if name in PROTOCOLS:
            spec = PROTOCOLS[name]
            val = spec.val_per_class if val_per_class is None else val_per_class
            lines.append(
                f"Protocol `{name}` ({spec.literature}): per class {spec.train_per_class} train, {val} val queries, "
                f"{spec.test_per_class} test queries; database: {DATABASE_WORDS[spec.database]}; mAP@{topk or 'all'}, "
                f"ties broken by {'database index (seeded shuffled order)' if ties == 'index' else 'averaging'}."
            )
        else:
            lines.append(f"Protocol `{name}` (list files); mAP@{topk or 'the protocol cut-off'}, ties by {ties}.")
    gaps = [
        abs(run.metrics["test/mAP_ties_index"] - run.metrics["test/mAP_ties_average"])
        for run in study.finished
        if "test/mAP_ties_index" in run.metrics and "test/mAP_ties_average" in run.metrics
    ]
    if gaps and max(gaps) > 0.001:
        lines.append(
            f"Ties matter here: test mAP with ties by index and averaged over tie orders differ by up to "
            f"{max(gaps):.4f} "
            "(both are logged on every run: `test/mAP_ties_index`, `test/mAP_ties_average`)."
        )
    elif gaps:
        lines.append(f"Ties barely matter here: the two tie rules agree within {max(gaps):.4f} on every run.")
    return " ".join(lines)


DATABASE_WORDS = {
    "rest": "every non-query image, train included",
    "rest_without_train": "every other image, train excluded",
    "train": "the training images",
}


def _hardware(study: Study) -> str:
    """Where the numbers were made, from the trials' tags: per-seed values reproduce only there."""
    cpus = sorted({run.tags.get(f"{TAG}cpu_model", "") for run in study.finished} - {""})
    threads = sorted({run.tags.get(f"{TAG}torch_threads", "") for run in study.finished} - {""})
    if not cpus:
        return "Hardware: not recorded by these runs."
    return (
        f"Hardware: {'; '.join(cpus)}, {'/'.join(threads)} torch thread(s) per trial. Per-seed numbers reproduce bit "
        "for bit only on the same CPU at the same thread count; the verdicts are what should reproduce anywhere."
    )


def _readme(
    study: Study, metric: str, notes: dict[str, str], directions: list[str], command: str | None, findings: list[str]
) -> str:
    counts = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in sorted(study.counts().items()))
    crossed = is_crossed(study.runs)
    seeds = sorted({replicate_key(run, crossed) for run in study.runs}, key=str)
    started = min((run.start_time for run in study.runs if run.start_time), default=0)
    lines = [
        f"# Study `{study.experiment_name}`",
        "",
        *(
            [
                f"Sweep: `{command}` (started {datetime.fromtimestamp(started / 1000, timezone.utc):%Y-%m-%d %H:%M} "
                "UTC), "
                f"seeds {seeds}."
            ]
            if command
            else []
        ),
        "",
        f"Built by `python -m hashtune.report --experiment {study.experiment_name}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the MLflow store `{display_uri(study.tracking_uri)}` "
        f"(experiment id {study.experiment_id}).",
        "",
        f"Trial runs: {counts}. Tables use `{METRIC}` of finished runs; `{metric}` selects best runs and is the "
        "importance objective. "
        + (
            "Seeds are `data.seed/train.seed` pairs of a crossed design."
            if crossed
            else "Seeds are `train.seed` = `data.seed` replicates."
        ),
        "",
        _protocol(study),
        "",
        _hardware(study),
        "",
        "| file | what |",
        "|---|---|",
        *[f"| `{name}` | {note} |" for name, note in notes.items() if note],
    ]
    if directions:
        lines += ["", "## The papers' directions on this data", "", *[f"- {sentence}" for sentence in directions]]
    if findings:
        lines += ["", "## TransHash Tab. 3's findings on this data", "", *[f"- {sentence}" for sentence in findings]]
    return "\n".join(lines) + "\n"
