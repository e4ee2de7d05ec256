"""The benchmark scripts run end to end at tiny size and write their tables (targets live in results/)."""

import os
from pathlib import Path

import pytest

from benchmarks import bench_metrics, digits_baselines


def test_bench_metrics_table(tmp_path):
    out = tmp_path / "metrics.md"
    bench_metrics.main(["--scale", "0.01", "--out", str(out)])
    rows = [
        line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line
    ]
    header, rows = [cell.strip() for cell in rows[0]], [[cell.strip() for cell in row] for row in rows[1:]]
    assert [row[0] for row in rows] == [
        "CIFAR-10-sized, mAP@all",
        "ImageNet-100-sized, mAP@1000",
        "NUS-WIDE-shaped (21 labels, multi-label), mAP@5000",
    ]
    assert rows[0][1] == "10 x 540"
    for row in map(dict, (zip(header, row) for row in rows)):
        assert row["agree to 1e-9"] == "True" and 0.0 < float(row["mAP"]) <= 1.0  # the kernel equals the argsort loop
        assert float(row["hashtune s (best of 5)"]) >= 0 and float(row["limit s (best of 5)"]) >= 0  # ms at this size
        # the loop's seconds are printed to 3 decimals: under 0.5 ms at this size they read 0.000 (a fresh clone met it)
        assert float(row["argsort loop s"]) >= 0 and float(row["speed-up over the loop"].removesuffix("x")) > 0
        assert row["hashtune / limit"].endswith("x")


def test_digits_baselines_table(tmp_path):
    out = tmp_path / "baselines.md"
    digits_baselines.main(
        [
            "--bits",
            "16",
            "--seeds",
            "0",
            "--extra",
            "train.epochs=1",
            "train.warmup_epochs=0",
            "model.depth=2",
            "--out",
            str(out),
        ]
    )
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in out.read_text().splitlines()
        if line.startswith("| ")
    }
    assert 0.25 < float(rows["LSH (pixels)"].split()[0]) < 0.45  # seed 0 of LSH at 16 bits (3-seed mean 0.354)
    assert 0.55 < float(rows["ITQ (pixels)"].split()[0]) < 0.70
    images = {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in out.read_text().splitlines()
        if line.startswith("| hashtune")
    }
    assert images == {
        "hashtune symmetric (defaults, 300 epochs)": "500",
        "hashtune asymmetric (300 epochs)": "500",
    }  # equal work per epoch


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's Ray benchmarks (their `init_ray` finds it started and leaves it running)."""
    from ray_helpers import local_ray

    with local_ray(num_cpus=2):
        yield


@pytest.mark.slow
@pytest.mark.xdist_group("ray-benchmarks")
def test_ray_benchmarks_at_tiny_size(tmp_path, ray_session):
    from benchmarks import bench_ray_overhead, gpu_throughput

    tiny = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "train.warmup_epochs=0"]
    bench_ray_overhead.main(["--epochs", "1", "--threads", "2", "--extra", *tiny, "--out", str(tmp_path / "ray.md")])
    assert (tmp_path / "ray.md").read_text().count("| Ray Train |") == 2
    gpu_throughput.main(
        ["--tiny", "--images", "64", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "gpu.md")]
    )
    gpu_rows = [line for line in (tmp_path / "gpu.md").read_text().splitlines() if line.startswith("| CPU")]
    assert [row.split("|")[4].strip() for row in gpu_rows] == [
        "plain loop, fp32",
        "plain loop, bf16 autocast",
        "Ray Train (1 worker, 1 CPU), bf16 autocast",
    ]
    assert float(gpu_rows[0].split("|")[6]) == 1.0 and all(float(row.split("|")[5]) > 0 for row in gpu_rows)


@pytest.mark.slow
@pytest.mark.xdist_group("ray-benchmarks")
def test_search_benchmark_at_tiny_size(tmp_path, ray_session):
    from benchmarks import bench_search

    tiny = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "train.warmup_epochs=0"]
    out, keep = tmp_path / "search.md", tmp_path / "keep"
    arguments = [
        "--trials",
        "2",
        "--seeds",
        "0",
        "--extra",
        *tiny,
        "--fixed",
        "train.epochs=2",
        "train.eval_every=1",
        "--keep",
        str(keep),
    ]
    bench_search.main([*arguments, "--out", str(out)])
    summary, per_run = out.read_text().split("Per run:")
    rows = [line.split("|")[1:-1] for line in summary.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0].strip() for row in rows] == list(bench_search.ARMS)
    for row in rows:
        assert (
            int(row[1]) == 1
            and 0.0 < float(row[5].split()[0]) <= 1.0
            and float(row[6].split()[0]) > 0
            and row[7].strip().endswith("x")
        )
    assert "target met" in summary or "target not met" in summary
    conditional = [line for line in per_run.splitlines() if line.startswith("| multivariate TPE")]
    assert len(conditional) == 1 and "dual_stream=" in conditional[0]

    # run again on the kept store: finished runs are read back, nothing trains again
    trial_runs = _trial_run_ids(keep)
    again = tmp_path / "again.md"
    bench_search.main([*arguments, "--out", str(again)])
    assert _trial_run_ids(keep) == trial_runs
    assert again.read_text().split("Per run:")[1] == per_run
    bench_search.main([*arguments, "--report-only", "--out", str(again)])  # reads the kept store, trains nothing
    assert _trial_run_ids(keep) == trial_runs and again.read_text().split("Per run:")[1] == per_run
    with pytest.raises(SystemExit, match="no seed has finished"):
        bench_search.main(
            ["--trials", "2", "--seeds", "0", "--keep", str(tmp_path / "empty"), "--report-only", "--out", str(again)]
        )


def test_search_benchmark_report_after_a_seed_says_it_is_partial(tmp_path):
    import argparse

    from benchmarks import bench_search

    run = {
        "trials": 24,
        "finished": 10,
        "stopped": 14,
        "best_val": 0.95,
        "best_test": 0.94,
        "best_params": {"train.lr": 0.001},
        "cpu_s": 1000.0,
        "wall_s": 600.0,
        "resumed": False,
        "seed": 0,
    }
    runs = {label: [run | {"cpu_s": 2000.0 if label == bench_search.RANDOM else 900.0}] for label in bench_search.ARMS}
    args = argparse.Namespace(trials=24, seeds=[0, 1, 2], extra=[], fixed=[], out=tmp_path / "search.md")
    bench_search.write_bench_report(args, runs)
    text = (tmp_path / "search.md").read_text()
    assert "Partial: seeds [0] of [0, 1, 2] done" in text
    assert "TPE + ASHA: mean best test mAP 0.940 at 0.45x random's CPU-seconds: target met" in text
    args.seeds = [0]
    bench_search.write_bench_report(args, runs)
    assert "Partial" not in (tmp_path / "search.md").read_text()


def test_search_benchmark_pairs_each_searcher_with_random_search_by_seed():
    from benchmarks import bench_search

    def arm(tests, cpus):
        return [{"seed": seed, "best_test": test, "cpu_s": cpu} for seed, (test, cpu) in enumerate(zip(tests, cpus))]

    runs = {
        "TPE + ASHA": arm([0.93, 0.932, 0.928], [500, 450, 550]),  # +0.030 ± t(.975, 2) * 0.002 / sqrt(3) = ±0.005
        bench_search.RANDOM: arm([0.90, 0.90, 0.90], [1000, 1000, 1000]),
        "multivariate TPE, conditional space + ASHA": arm([0.901, 0.899, 0.90], [400, 500, 600]),
    }
    tpe, conditional = bench_search.paired_with_random(runs)
    assert tpe.startswith(
        "TPE + ASHA - random, paired over seeds [0, 1, 2]: best test mAP +0.030, 95% CI [+0.025, +0.035]: **holds**"
    )
    assert tpe.endswith("CPU-seconds 0.50x random's (0.45-0.55x per seed)")
    assert "best test mAP +0.000, 95% CI [-0.002, +0.002]: **equivalent**" in conditional  # TOST within ±0.02
    one_seed = bench_search.paired_with_random({label: arm_runs[:1] for label, arm_runs in runs.items()})
    assert (
        one_seed[0] == "TPE + ASHA - random, paired over seeds [0]: best test mAP +0.030: **inconclusive**; "
        "CPU-seconds 0.50x random's (0.50-0.50x per seed)"
    )


def test_an_interrupted_search_benchmark_says_its_own_command_continues_it(tmp_path, monkeypatch, capsys):
    """Its arms are sweeps run in the benchmark's process: `hashtune.sweep --resume` would continue one arm outside
    the benchmark (without its kept store or its timing), so the line an interruption prints is the benchmark's."""
    from benchmarks import bench_search
    from hashtune.sweep import driver

    def interrupted(args, base, space, provenance=None, *, resume_line=None):  # what run_sweep raises on SIGTERM
        raise driver.SweepInterrupted(f"sweep {args.name!r} interrupted by SIGTERM; {resume_line}", exit_code=143)

    monkeypatch.setattr(driver, "run_sweep", interrupted)
    arguments = ["--trials", "2", "--seeds", "0", "--out", str(tmp_path / "search.md")]
    for keep, says in (
        (
            ["--keep", str(tmp_path / "keep")],
            "nothing finished is lost. Continue it with: python -m benchmarks.bench_search "
            + " ".join(arguments + ["--keep", str(tmp_path / "keep")]),
        ),
        ([], "the benchmark kept nothing (its store was temporary): give --keep DIR"),
    ):
        with pytest.raises(SystemExit) as stop:
            bench_search.main(arguments + keep)
        assert stop.value.code == 143
        assert (
            capsys.readouterr()
            .err.strip()
            .splitlines()[-1]
            .startswith(f"bench_search: sweep 'bench-tpe-asha-seed0' interrupted by SIGTERM; {says}")
        )


def test_the_driver_records_an_interruption_once_with_the_callers_resume_line(tmp_path):

    from mlflow import MlflowClient

    from hashtune.sweep.driver import _Interruption, _resume_line
    from hashtune.sweep.options import SweepOptions
    from hashtune.sweep.stores import TrialTracking

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("sweep")
    parent = client.create_run(experiment_id).info.run_id
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    interruption = _Interruption(
        client, TrialTracking(client.tracking_uri, experiment_id, parent), "sweep", "continue with X"
    )
    assert interruption.record("SIGTERM") == "sweep 'sweep' interrupted by SIGTERM; continue with X"
    assert (
        interruption.record("SIGINT") == "sweep 'sweep' interrupted by SIGTERM; continue with X"
    )  # the watchdog's, then the driver's
    assert (
        client.get_run(parent).info.status == "KILLED"
        and client.get_run(child).data.tags["hashtune.status"] == "killed"
    )
    # the sweep's own line: the command that finds the same sweep again
    cli = SweepOptions("ablations")
    assert (
        _resume_line(cli, "ab")
        == "nothing finished is lost. Continue it with: python -m hashtune.sweep --space ablations --name ab --resume"
    )
    elsewhere = SweepOptions(
        "my space.yaml", results_dir=tmp_path / "r", mlflow_uri="http://127.0.0.1:5000", address="auto", base="tune"
    )  # what it was given, so the command finds the same sweep
    assert _resume_line(elsewhere, "ab").endswith(
        f"--space 'my space.yaml' --name ab --resume --results-dir {tmp_path / 'r'} "
        "--mlflow-uri http://127.0.0.1:5000 --address auto --base tune"
    )


def test_search_benchmark_shows_a_conditional_key_only_where_it_was_sampled():
    from benchmarks.bench_search import _sampled
    from hashtune.sweep.space import Domain

    k_groups = Domain(kind="int", values=(1, 4), when={"model.dual_stream": True})
    assert _sampled({"model.dual_stream": "True", "model.k_groups": "2"}, "model.k_groups", k_groups) == "2"
    assert _sampled({"model.dual_stream": "False", "model.k_groups": "3"}, "model.k_groups", k_groups) == "-"
    assert _sampled({"train.lr": "0.001"}, "train.lr", Domain(kind="loguniform", values=(1e-4, 1e-2))) == "0.001"


def test_gpu_report_reads_what_gpu_check_leaves(tmp_path, monkeypatch):
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "scripts"))
    import gpu_report

    first, second, results = tmp_path / "1", tmp_path / "2", tmp_path / "results"
    for folder in (first, second, results):
        folder.mkdir()
    (first / "machine.txt").write_text("NVIDIA H200, 580, 143771 MiB\npython 3.12.3 torch 2.11.0\n16\n")
    metrics = {
        "test/mAP": 0.9,
        "throughput/images_per_s": 1000.0,
        "time/train_s": 30.0,
        "cost/wall_seconds": 40.0,
        "cost/cpu_seconds": 400.0,
        "cost/gpu_seconds": 0.0,
        "cost/images_seen": 50000.0,
        "epoch": 20,
    }
    (first / "digits_cpu.json").write_text(json.dumps(metrics))
    (first / "digits_gpu.json").write_text(json.dumps(metrics | {"cost/cpu_seconds": 40.0, "cost/gpu_seconds": 40.0}))
    table = (
        "| device | model | batch | path | images/s | vs fp32 loop |\n|---|---|---|---|---|---|\n"
        "| GPU | vit | 256 | plain loop, fp32 | 100 | 1.000 |\n| GPU | vit | 256 | plain loop, bf16 autocast | 400 | "
        "4.000 |\n"
        "| GPU | vit | 256 | Ray Train (1 worker, 1 CPU), bf16 autocast | 200 | 2.000 |\n"
    )
    (first / "gpu_throughput.md").write_text(f"# T\n\nCommand: `c`\n\nDate: d\n\n{table.replace('| 400 |', '| 1 |')}")
    (second / "gpu_throughput.md").write_text(f"# T\n\nCommand: `c`\n\nDate: d\n\n{table}")  # a later folder wins
    monkeypatch.setattr(sys, "argv", ["gpu_report.py", str(first), str(second), "--results", str(results)])
    gpu_report.main()
    text = (results / "gpu.md").read_text()
    assert "| plain loop, CPU (16 cores) | 0.900 | 1000 | 30 | 40 | 400 | 0 | 50000 |" in text
    assert "## Digits end to end (shipped defaults, 32 bits, 20 epochs, seed 0)" in text  # what the runs trained
    assert (
        "bf16 autocast trains ViT-B/16 4.00x as fast as fp32" in text
        and "Ray Train (1 worker, 1 CPU), bf16 autocast: 0.50x" in text
    )
    assert "0.10x its CPU-seconds" in text and (results / "gpu_throughput.md").read_text().endswith(table)


def _trial_run_ids(results_dir) -> set[str]:
    from mlflow import MlflowClient

    from hashtune.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri(results_dir))
    return {
        run.info.run_id
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
    }


def test_retrieval_benchmark_at_tiny_size(tmp_path):
    from benchmarks import bench_retrieval

    out = tmp_path / "retrieval.md"
    bench_retrieval.main(
        [
            "--sizes",
            "5000",
            "--ks",
            "10",
            "300",
            "--queries",
            "5",
            "--repeats",
            "2",
            "--approx-sizes",
            "20000",
            "--out",
            str(out),
        ]
    )
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 5,000")]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith("True") for row in rows)
    approx = {line.split("|")[2].strip(): line for line in out.read_text().splitlines() if line.startswith("| 20,000")}
    assert set(approx) == {"flat", "ivf", "hnsw"} and "| 1.000 | 1.000 |" in approx["flat"]


@pytest.mark.slow
@pytest.mark.xdist_group("ray-benchmarks")
def test_scale_probe_counts_a_worker_that_ended_and_not_rays_agents(tmp_path, ray_session):
    """bench_scale's CPU probe: a Ray worker that spent CPU and ended before the last reading is counted (the sampler
    read it while it ran), Ray's agents (`ray::` processes too) are daemons, and the actor table counts the processes
    that ran the job's actors."""
    import json
    import time

    import psutil
    import ray

    from benchmarks._scale_probe import RAY_AGENTS, CpuSampler, cpu_delta, ray_process_cpu, trial_process_count

    @ray.remote(num_cpus=1)
    class Burner:
        def burn(self, seconds: float) -> int:
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass
            return os.getpid()

    before, sampler, ran_actors = ray_process_cpu(), CpuSampler(tmp_path / "cpu.json"), trial_process_count()
    burner = Burner.remote()
    pid = ray.get(burner.burn.remote(1.0))
    burnt = before.get(pid, ("trial", 0.0))[1] + 1.0  # Ray may have started the process before the test
    deadline = time.time() + 60
    while time.time() < deadline and json.loads((tmp_path / "cpu.json").read_text()).get(str(pid), [0, 0])[1] < burnt:
        time.sleep(0.1)  # polled: until the sampler has read the whole burn
    ray.kill(burner)
    psutil.wait_procs([psutil.Process(pid)], timeout=60)
    now = ray_process_cpu()
    readings = sampler.stop()  # the ended worker's own reading: other Rays on the machine cannot make up for it
    assert pid not in now and readings[pid][0] == "trial" and readings[pid][1] >= burnt  # with its start-up
    assert cpu_delta(before, readings)["trial"] >= 1.0
    agents = {
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if (process.info["cmdline"] or [""])[0] in RAY_AGENTS
    }
    assert agents & now.keys() and all(now[pid][0] == "daemon" for pid in agents & now.keys())
    assert trial_process_count() == ran_actors + 1  # the module's earlier tests ran theirs in this job too
