"""Studies from MLflow: tables checked against hand-computed statistics on a store with known runs."""

import json
import math
import time
import urllib.request

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from benchmarks.servers import mlflow_server
from hashtune.config import Config, to_flat_dict
from hashtune.metrics import retrieval_metrics
from hashtune.report import ReportError, build_report, load_study
from hashtune.report.__main__ import main as report_main
from hashtune.report.importance import infer_distribution, parameter_importances, rebuild_study
from hashtune.report.sensitivity import continuous_sensitivity, k_bits_table
from hashtune.report.stats import mean_ci, paired_difference
from hashtune.report.tables import ablation_table, paper_directions
from hashtune.train.outputs import write_pr_curve

T_975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)

ABLATION = {  # variant -> overrides, per-seed test/mAP
    "full": ({}, [0.80, 0.90, 0.85]),
    "w/o Q": ({"loss.quant_weight": 0.0}, [0.70, 0.86, 0.78]),
    "w/o C": ({"loss.prob": "sigmoid"}, [0.82, 0.93, 0.88]),
}


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="study", tags={"hashtune.role": "sweep"}).info.run_id
    return uri, client, experiment_id, parent


def _child(client, experiment_id, parent, overrides, *, status="finished", variant="", metrics=None, pr_dir=None):
    flat = to_flat_dict(Config().replace(overrides))
    metrics = dict(metrics or {})
    if "val/mAP" in metrics:  # as the trainer logs them: the best-so-far next to the last
        metrics.setdefault("val/best_mAP", metrics["val/mAP"])
    run = client.create_run(
        experiment_id,
        run_name=f"{variant} {overrides}",
        tags={
            "mlflow.parentRunId": parent,
            "hashtune.variant": variant,
            "hashtune.status": status,
            "hashtune.trial_id": f"t{time.time_ns()}",
        },
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in flat.items()],
        metrics=[Metric(k, v, 0, 300) for k, v in (metrics or {}).items()],
    )
    if pr_dir is not None:
        client.log_artifact(run_id, str(pr_dir / "pr_curve.csv"))
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def ablation_store(tmp_path):
    uri, client, experiment_id, parent = _store(tmp_path)
    rng = np.random.default_rng(0)
    codes, labels = np.sign(rng.standard_normal((40, 8))), np.eye(4)[rng.integers(0, 4, 40)]
    pr_dir = tmp_path / "pr"
    pr_dir.mkdir()
    write_pr_curve(retrieval_metrics(codes[:10], codes[10:], labels[:10], labels[10:]), pr_dir / "pr_curve.csv")
    for variant, (overrides, values) in ABLATION.items():
        for seed, value in enumerate(values):
            seeded = overrides | {"train.seed": seed, "data.seed": seed}
            _child(
                client,
                experiment_id,
                parent,
                seeded,
                variant=variant,
                metrics={"test/mAP": value, "val/mAP": value - 0.01},
                pr_dir=pr_dir,
            )
    _child(
        client,
        experiment_id,
        parent,
        {"train.seed": 3},
        variant="full",
        status="stopped_early",
        metrics={"val/mAP": 0.5},
    )
    return uri, client, parent


def test_mean_ci_and_paired_test_match_hand_formulas():
    ci = mean_ci([0.80, 0.90, 0.85])
    assert ci.mean == pytest.approx(0.85) and ci.n == 3
    assert ci.half_width == pytest.approx(T_975_DF2 * 0.05 / math.sqrt(3))
    assert math.isnan(mean_ci([0.7]).half_width)
    full, without = dict(enumerate([0.80, 0.90, 0.85])), dict(enumerate([0.70, 0.86, 0.78]))
    d = paired_difference(without, full)
    differences = np.array([-0.10, -0.04, -0.07])
    t_statistic = differences.mean() / (differences.std(ddof=1) / math.sqrt(3))
    from scipy import stats

    assert d.difference.mean == pytest.approx(-0.07) and d.n == 3 and d.wins == 0
    assert d.p_value == pytest.approx(2 * stats.t.sf(abs(t_statistic), 2))
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_ablation_table_cells_ci_and_directions(ablation_store):
    uri, client, _ = ablation_store
    study = load_study(client, "study")
    assert study.counts() == {"finished": 9, "stopped_early": 1}
    table = ablation_table(study.runs)
    assert table.variants == ["full", "w/o C", "w/o Q"] and table.bits == [32]
    full = table.cells["full", 32]
    assert full.summary.mean == pytest.approx(0.85) and full.summary.n == 3  # the stopped run is not counted
    assert full.summary.half_width == pytest.approx(T_975_DF2 * 0.05 / math.sqrt(3))
    assert table.cells["w/o Q", 32].versus_reference.difference.mean == pytest.approx(-0.07)
    markdown = table.to_markdown()
    assert "**0.877 ± 0.137 (n=3)**" in markdown  # w/o C has the best mean: bold
    assert "0.850 ± 0.124 (n=3)" in markdown and "CPU-hours (all seeds)" in markdown
    directions = paper_directions(table)
    assert (
        directions[0].startswith("full > w/o C")
        and "**reversed** (-0.027 ± 0.014 mAP in the claim's direction, n=3" in directions[0]
    )
    assert (
        directions[1].startswith("full > w/o Q") and "**inconclusive** (+0.070 ± 0.075" in directions[1]
    )  # 3/3 seeds agree, yet
    assert not any("does not hold" in sentence for sentence in directions)
    rows = table.to_csv().splitlines()
    assert rows[0].startswith("variant,bits,n,mean,ci95_low") and rows[1].startswith("full,32,3,0.8500,0.7258,0.9742")


def test_report_writes_tables_plots_and_logs_them_on_the_parent(ablation_store, tmp_path):
    uri, client, parent = ablation_store
    written = {path.name for path in build_report(client, "study", tmp_path / "out")}
    assert {
        "ablation.md",
        "ablation.csv",
        "importance.csv",
        "importance.png",
        "pr_curves.png",
        "search_progress.png",
        "README.md",
    } <= written
    for name in written:
        if name.endswith(".png"):
            assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    importance = (tmp_path / "out" / "importance.csv").read_text()
    assert {"data.seed=train.seed", "loss.prob", "loss.quant_weight"} <= {
        line.split(",")[1] for line in importance.splitlines()[1:]
    }
    assert {line.split(",")[0] for line in importance.splitlines()[1:]} == {"fANOVA", "PED-ANOVA"}
    logged = {artifact.path for artifact in client.list_artifacts(parent, "report")}
    assert {f"report/{name}" for name in written} == logged
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "full > w/o Q" in readme
    assert (
        "Protocol `digits` (hashtune's embedded digits protocol): per class 50 train, 20 val queries, 30 test queries"
        in readme
    )
    assert "ablation.png" in written and "**inconclusive**" in readme


def test_k_bits_table_marks_infeasible_and_not_run_cells(tmp_path):
    uri, client, experiment_id, parent = _store(tmp_path)
    for k, bits, value in [(1, 16, 0.70), (1, 16, 0.72), (2, 16, 0.75), (2, 32, 0.80), (4, 32, 0.82)]:
        _child(
            client,
            experiment_id,
            parent,
            {"model.k_groups": k, "model.bits": bits},
            metrics={"test/mAP": value, "val/mAP": value},
        )
    table = k_bits_table(load_study(client, "study").runs)
    assert table.k_values == [1, 2, 3, 4] and table.bits == [16, 32]
    assert table.cell_text(1, 16) == "0.710 (n=2)" and table.cell_text(2, 32) == "0.800 (n=1)"
    # 16 bits leave 8 local bits: 3 or 4 heads would get under min_local_bits=4 each
    assert table.cell_text(3, 16) == "-" and table.cell_text(4, 16) == "-"
    assert table.cell_text(1, 32) == "" and table.cell_text(3, 32) == ""  # feasible, not run
    assert "| K=3 | - |  |" in table.to_markdown()


def test_continuous_sensitivity_bins_and_importance_names(tmp_path):
    uri, client, experiment_id, parent = _store(tmp_path)
    rng = np.random.default_rng(1)
    for gamma in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0, 64.0]:
        lam = float(rng.uniform(0.01, 1.0))
        _child(
            client,
            experiment_id,
            parent,
            {"loss.gamma": gamma, "loss.quant_weight": lam},
            metrics={"test/mAP": 0.5 + 0.05 * math.log2(gamma), "val/mAP": 0.5 + 0.05 * math.log2(gamma)},
        )
    runs = load_study(client, "study").runs
    gamma = next(curve for curve in continuous_sensitivity(runs) if curve.param == "loss.gamma")
    assert gamma.log_scale and len(gamma.bin_means) == 4 and [m.n for m in gamma.bin_means] == [2, 2, 2, 2]
    assert gamma.bin_means[0].mean == pytest.approx(0.525) and gamma.bin_means[-1].mean < 0.81
    study = rebuild_study(runs)
    assert set(study.trials[0].distributions) == {"loss.gamma", "loss.quant_weight"}
    assert infer_distribution([1.0, 64.0]).log and not infer_distribution([0.0, 0.1]).log
    importances = parameter_importances(study)
    assert importances["fANOVA"]["loss.gamma"] > importances["fANOVA"]["loss.quant_weight"]


def test_report_errors_are_one_line(tmp_path, capsys):
    uri, client, experiment_id, parent = _store(tmp_path)
    with pytest.raises(ReportError, match=r"no MLflow experiment named 'nope' .* experiments there: Default, study"):
        load_study(client, "nope")
    _child(client, experiment_id, parent, {}, status="stopped_early", metrics={"val/mAP": 0.4})
    with pytest.raises(ReportError, match=r"has no finished trial runs \(stopped_early: 1\)"):
        load_study(client, "study")
    _child(client, experiment_id, parent, {}, metrics={"val/mAP": 0.4})
    with pytest.raises(ReportError, match=r"1 finished run\(s\) of 'study' have no test/mAP metric"):
        load_study(client, "study")
    assert report_main(["--experiment", "nope", "--mlflow-uri", uri]) == 2
    assert report_main(["--experiment", "study", "--mlflow-uri", f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
    assert report_main(["--experiment", "study", "--mlflow-uri", uri, "--metric", "test/mAP"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hashtune.report:")]
    assert len(errors) == 3 and "no MLflow store at" in errors[1] and "non-validation" in errors[2]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs_the_report_used(ablation_store, tmp_path):
    uri, client, _ = ablation_store
    with mlflow_server(uri, ui=True) as server:
        base = server.url
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=study", timeout=10
        ) as response:
            experiment = json.loads(response.read())
        experiment_id = experiment["experiment"]["experiment_id"]
        found = _post(
            f"{base}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [experiment_id], "max_results": 100, "filter": "tags.`hashtune.status` = 'finished'"},
        )
        runs = found["runs"]
        assert len(runs) == 9
        study = load_study(client, "study")
        served = {run["info"]["run_id"]: run for run in runs}
        for trial in study.finished:
            run = served[trial.run_id]
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert metrics["test/mAP"] == pytest.approx(trial.metrics["test/mAP"])
            assert params["loss.prob"] == trial.config.loss.prob and params["train.seed"] == str(trial.seed)


def test_ablation_rows_split_by_other_varying_parameters(tmp_path):
    uri, client, experiment_id, parent = _store(tmp_path)
    values = {
        ("full", 1): [0.80, 0.82],
        ("full", 2): [0.90, 0.92],
        ("w/o Q", 1): [0.70, 0.74],
        ("w/o Q", 2): [0.91, 0.95],
    }
    for (variant, k), per_seed in values.items():
        overrides = {"loss.quant_weight": 0.0} if variant == "w/o Q" else {}
        for seed, value in enumerate(per_seed):
            _child(
                client,
                experiment_id,
                parent,
                overrides | {"model.k_groups": k, "train.seed": seed},
                variant=variant,
                metrics={"test/mAP": value, "val/mAP": value},
            )
    table = ablation_table(load_study(client, "study").runs)
    assert table.variants == ["full k_groups=1", "w/o Q k_groups=1", "full k_groups=2", "w/o Q k_groups=2"]
    assert table.cells["w/o Q k_groups=1", 32].versus_reference.difference.mean == pytest.approx(-0.09)
    assert table.cells["w/o Q k_groups=2", 32].versus_reference.difference.mean == pytest.approx(0.02)
    directions = paper_directions(table)
    assert directions[0].startswith(
        "full > w/o Q (the quantization loss helps) at 32 bits, k_groups=1: **inconclusive**"
    )
    assert "n=2; detectable at 80% power: 0.163" in directions[0]  # two seeds: a +0.09 effect is within the noise
    assert "k_groups=2: **" in directions[1] and "does not hold" not in directions[1]


def test_the_four_verdicts():
    from hashtune.report.stats import claim_verdict

    assert claim_verdict([0.05, 0.06, 0.055, 0.052], delta=0.02).verdict == "holds"
    assert claim_verdict([-0.05, -0.06, -0.055, -0.052], delta=0.02).verdict == "reversed"
    assert claim_verdict([0.001, -0.002, 0.0015, -0.001, 0.0005], delta=0.02).verdict == "equivalent"
    noisy = claim_verdict([0.03, -0.04, 0.05, -0.02], delta=0.02)  # a spread as large as the effects
    assert noisy.verdict == "inconclusive" and noisy.seeds_for_delta > 4
    assert claim_verdict([0.05], delta=0.02).verdict == "inconclusive"  # one seed says nothing


def test_mde_and_seeds_needed_agree_with_statsmodels_and_scipy():
    from scipy import stats as scipy_stats
    from statsmodels.stats.power import TTestPower

    from hashtune.report.stats import minimum_detectable_effect, seeds_for_half_width

    sd, n = 0.03, 6
    mde = minimum_detectable_effect(sd, n)
    assert TTestPower().power(effect_size=mde / sd, nobs=n, alpha=0.05, alternative="two-sided") == pytest.approx(
        0.8, abs=1e-6
    )
    needed = seeds_for_half_width(sd, 0.02)
    half_width = lambda k: scipy_stats.t.ppf(0.975, k - 1) * sd / k**0.5  # noqa: E731
    assert half_width(needed) <= 0.02 < half_width(needed - 1)


def test_base_experiment_must_be_a_finished_sweep_with_a_finished_trial(tmp_path, capsys):
    """`--base` refuses, in one line, a missing experiment, an unfinished sweep, or one with no finished trial."""
    from hashtune.sweep.cli import main as sweep_main
    from hashtune.sweep.tuned_base import BaseError, tuned_base

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(BaseError, match="no sweep of that name"):
        tuned_base(client, "tune")
    experiment_id = client.create_experiment("tune")
    parent = client.create_run(experiment_id, tags={"hashtune.role": "sweep"}).info.run_id
    with pytest.raises(
        BaseError, match=r"its sweep is not finished \(parent run RUNNING\); finish it with --resume first"
    ):
        tuned_base(client, "tune")
    client.set_terminated(parent, "FINISHED")
    _child(client, experiment_id, parent, {"loss.gamma": 7.0}, status="stopped_early", metrics={"val/mAP": 0.9})
    with pytest.raises(BaseError, match="has no finished trial run with val/best_mAP"):
        tuned_base(client, "tune")
    _child(
        client, experiment_id, parent, {"loss.gamma": 3.0, "train.lr": 1e-3}, metrics={"val/mAP": 0.7, "test/mAP": 0.9}
    )
    _child(client, experiment_id, parent, {"loss.gamma": 9.0}, metrics={"val/mAP": 0.8, "test/mAP": 0.6})
    config, provenance = tuned_base(client, "tune")
    assert config.loss.gamma == 9.0 and provenance["value"] == 0.8  # chosen on validation, not on test
    results = tmp_path / "other"
    assert sweep_main(["--space", "smoke", "--base", "nope", "--results-dir", str(tmp_path), "--name", "x"]) == 2
    assert "--base 'nope': no sweep of that name" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not results.exists() and not (tmp_path / "ray").exists()


def test_base_becomes_the_start_of_every_arm_with_cli_overrides_on_top(tmp_path):

    from hashtune.sweep.cli import _tuned, build_parser
    from hashtune.sweep.space import load_space

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("tune")
    parent = client.create_run(experiment_id, tags={"hashtune.role": "sweep"}).info.run_id
    client.set_terminated(parent, "FINISHED")
    _child(
        client,
        experiment_id,
        parent,
        {"loss.gamma": 9.0, "train.epochs": 300},
        metrics={"val/mAP": 0.8, "test/mAP": 0.6},
    )
    args = build_parser().parse_args(
        ["--space", "ablations", "--base", "tune", "--results-dir", str(tmp_path), "train.lr=0.004"]
    )
    base, space, provenance = _tuned(args, Config(), load_space("ablations"))
    assert base.loss.gamma == 9.0 and base.train.lr == 0.004 and base.train.epochs == 300  # not the space's fixed 150
    assert space.fixed == {} and space.base == "tune" and provenance["experiment"] == "tune"


def test_a_crossed_seed_study_pairs_by_seed_pair_and_splits_the_variance(tmp_path):
    uri, client, experiment_id, parent = _store(tmp_path)
    data_effect, train_effect = {0: 0.0, 1: -0.06, 2: 0.05}, {0: 0.0, 1: 0.004, 2: -0.003}
    for variant, overrides, shift in (("full", {}, 0.0), ("w/o Q", {"loss.quant_weight": 0.0}, -0.05)):
        for d in range(3):
            for t in range(3):
                value = 0.85 + shift + data_effect[d] + train_effect[t] + 0.001 * ((d * 3 + t) % 2)
                _child(
                    client,
                    experiment_id,
                    parent,
                    overrides | {"data.seed": d, "train.seed": t},
                    variant=variant,
                    metrics={"test/mAP": value, "val/mAP": value},
                )
    table = ablation_table(load_study(client, "study").runs)
    cell = table.cells["w/o Q", 32]
    assert sorted(cell.per_seed) == [f"{d}/{t}" for d in range(3) for t in range(3)]
    assert cell.versus_reference.n == 9 and cell.versus_reference.difference.mean == pytest.approx(-0.05)
    build_report(client, "study", tmp_path / "out", log_to_parent=False)
    split = (tmp_path / "out" / "variance_split.md").read_text()
    full_row = next(line for line in split.splitlines() if line.startswith("| full"))
    data_share, train_share = (int(part.split("(")[1].split("%")[0]) for part in full_row.split("|")[4:6])
    assert data_share > 90 and train_share < 5  # the data split causes the noise here, by construction
    assert "crossed design" in (tmp_path / "out" / "README.md").read_text()


def test_every_k_against_the_best_k_and_tab3_findings_in_the_four_words(tmp_path):
    from scipy import stats

    from hashtune.report.k_sensitivity import k_findings, k_versus_best

    uri, client, experiment_id, parent = _store(tmp_path)
    base = np.array([0.80, 0.82, 0.79, 0.81, 0.83, 0.80])
    cells = {  # (K, bits) -> per-seed test/mAP; val/mAP is test - 0.01, so the best K on validation is the best on test
        (2, 32): base,
        (3, 32): base - 0.001 + np.array([0.002, -0.002, 0.001, -0.001, 0.0015, -0.0015]),
        (1, 32): base - 0.10 + np.array([0.001, -0.001, 0.0, 0.002, -0.002, 0.0]),
        (4, 32): base + np.array([-0.05, -0.06, 0.04, -0.05, 0.06, -0.04]),
        (2, 64): base,
        (3, 64): base - 0.10 + np.array([0.001, -0.001, 0.0, 0.002, -0.002, 0.0]),
    }
    for (k, bits), values in cells.items():
        for seed, value in enumerate(values):
            _child(
                client,
                experiment_id,
                parent,
                {"model.k_groups": k, "model.bits": bits, "train.seed": seed, "data.seed": seed},
                metrics={"test/mAP": float(value), "val/mAP": float(value) - 0.01},
            )
    runs = load_study(client, "study").runs
    rows = {(row.k, row.bits): row for row in k_versus_best(runs, delta=0.02)}
    assert {row.best_k for row in rows.values()} == {2}
    words = {key: row.verdict.verdict for key, row in rows.items() if row.k != row.best_k}
    assert words == {(1, 32): "reversed", (3, 32): "equivalent", (4, 32): "inconclusive", (3, 64): "reversed"}
    differences = cells[4, 32] - cells[2, 32]  # the hand formula: paired t-interval
    half = (
        stats.t.ppf(1 - 0.05 / 3 / 2, 5) * differences.std(ddof=1) / math.sqrt(6)
    )  # 3 comparisons at 32 bits: alpha / 3
    assert rows[4, 32].verdict.difference.mean == pytest.approx(differences.mean())
    assert rows[4, 32].verdict.difference.half_width == pytest.approx(half)
    paper, *findings = k_findings(runs, list(rows.values()), delta=0.02)
    assert "TransHash Tab. 3" in paper
    assert '32 bits, "mAP is not very sensitive to K": **inconclusive**' in findings[0]  # K=3 equivalent, K=4 unsettled
    assert '32 bits, "K = 2": **inconclusive**' in findings[1] and "K=2 vs K=1: holds" in findings[1]
    assert '64 bits, "mAP is not very sensitive to K": **reversed**' in findings[2]  # K=3 worse by more than delta
    assert '64 bits, "K = 2": **holds**' in findings[3]
    assert "no verdict" in findings[4] and not any("does not hold" in sentence for sentence in findings)


def test_one_reference_rule_for_sweep_and_report():
    """The report compares with the variant the sweep recorded as its reference (its space's first), unless told
    another; a replicated sweep's schedule always with its own; `full` for sweeps that recorded none."""
    from hashtune.report.build import _reference
    from hashtune.report.runs import Study
    from hashtune.sweep.space import load_space

    def study(params):
        return Study("e", "0", "sqlite://", [], ["p"], parent_params=params)

    assert _reference(study({"reference": "defaults"}), None) == "defaults"
    assert _reference(study({"reference": "defaults"}), "tuned") == "tuned"
    assert _reference(study({"reference": "a", "replicates.reference": "b"}), "c") == "b"
    assert _reference(study({}), None) == "full"
    assert load_space("defaults_vs_tuned").reference == "defaults"
