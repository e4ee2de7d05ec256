"""Every bad input through the CLIs: one line on stderr naming the value, a non-zero exit, nothing half-written."""

import pytest
import torch
from conftest import with_overrides, write_cifar_folder, write_listfile_folder

from hashtune.sweep.cli import main as sweep_main
from hashtune.train.cli import main as train_main
from hashtune.train.model import create_backbone

TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "train.epochs=1", "train.warmup_epochs=0"]


def _space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _cifar_missing_batch(tmp_path) -> list[str]:
    folder = write_cifar_folder(tmp_path / "cifar", per_batch=10)
    (folder / "data_batch_3").unlink()
    return ["data.name=cifar10", f"data.root={folder}"]


def _listfile_wrong_width(tmp_path) -> list[str]:
    root = write_listfile_folder(tmp_path / "lists")
    with (root / "test.txt").open("a") as handle:
        handle.write("images/000.png 1 0\n")
    return ["data.name=listfile", f"data.root={root}", "model.img_size=8", "model.patch_size=4"]


def _listfile_unreadable_image(tmp_path) -> list[str]:
    root = write_listfile_folder(tmp_path / "lists")
    for image in (root / "images").glob("*.png"):
        image.write_bytes(b"garbage")
    return ["data.name=listfile", f"data.root={root}", "model.img_size=8", "model.patch_size=4"]


def _wrong_architecture(tmp_path) -> list[str]:
    path = tmp_path / "other.pth"
    torch.save(
        create_backbone(
            "vit_tiny_patch16_224", img_size=8, patch_size=2, depth=1, embed_dim=32, num_heads=2, in_chans=1
        ).state_dict(),
        path,
    )
    return [f"model.pretrained={path}"]


TRAIN_CASES = {
    "unknown config key": (lambda tmp: ["model.bitz=3"], "unknown config key 'model.bitz'"),
    "wrong type": (lambda tmp: ["model.bits=abc"], "model.bits: expected int, got str 'abc'"),
    "missing data root": (lambda tmp: ["data.name=cifar10", f"data.root={tmp / 'nowhere'}"], "is not a directory"),
    "CIFAR folder with a missing batch": (_cifar_missing_batch, "lacks CIFAR-10 batches ['data_batch_3']"),
    "list file with a wrong label width": (_listfile_wrong_width, "label row of width 2"),
    "unreadable image": (_listfile_unreadable_image, "cannot read image"),
    "pretrained weights of another architecture": (_wrong_architecture, "does not fit vit_tiny_patch16_224"),
    "infeasible K for the bits": (lambda tmp: ["model.bits=16", "model.k_groups=4"], "bits=16 with k_groups=4"),
    "codes longer than the mAP kernels rank": (
        lambda tmp: ["model.bits=1024"],
        "model.bits: expected at most 255 (the exact mAP kernels",
    ),
    "a batch of one image (no pairs)": (
        lambda tmp: ["train.batch_size=1"],
        "train.batch_size: expected at least 2 (the pair losses",
    ),
    "a key given twice": (
        lambda tmp: ["model.bits=16", "model.bits=32"],
        "override key 'model.bits' is given twice, as 'model.bits=16' and 'model.bits=32'; give it once",
    ),
    "YAML aliases in a config file (billion laughs)": (
        lambda tmp: [
            "--config",
            str(_write(tmp / "laughs.yaml", 'a: &a ["lol", "lol"]\nb: &b [*a, *a]\nc: [*b, *b]\n')),
        ],
        "alias *a on line 2: aliases are not accepted",
    ),
}


def _write(path, text: str):
    path.write_text(text)
    return path


def _one_error_line(capsys, prefix: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1, lines[-5:]
    return errors[0]


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input(case, tmp_path, capsys):
    make, message = TRAIN_CASES[case]
    out = tmp_path / "run"
    assert train_main(["--out", str(out), "--no-progress", *TINY, *make(tmp_path)]) == 2
    assert message in _one_error_line(capsys, "hashtune.train: error:")
    if case != "unreadable image":  # that one fails in the first batch, after the run folder started
        assert not out.exists(), "a failed start must not leave a half-written run folder"


SWEEP_CASES = {
    "unknown space name": (lambda tmp: ["--space", "nonesuch"], "unknown space 'nonesuch'; shipped spaces:"),
    "malformed YAML": (lambda tmp: ["--space", _space(tmp, "params: [1, 2\n")], "not valid YAML"),
    "unknown key in a space": (
        lambda tmp: ["--space", _space(tmp, "params: {model.bitz: {grid: [16]}}\n")],
        "unknown config key 'model.bitz'",
    ),
    "K/bits infeasible for every point": (
        lambda tmp: ["--space", _space(tmp, "params: {model.k_groups: {grid: [5, 6]}, model.bits: {grid: [16]}}\n")],
        "every one of the 2 grid points has an infeasible",
    ),
    "unknown override key": (lambda tmp: ["--space", "smoke", "optim.lr=3"], "unknown config key 'optim.lr'"),
    "unreachable MLflow URI": (
        lambda tmp: ["--space", "smoke", "--mlflow-uri", "http://127.0.0.1:9"],
        "MLflow tracking URI 'http://127.0.0.1:9' is unreachable",
    ),
    "--resume of a sweep that does not exist": (
        lambda tmp: ["--space", "smoke", "--resume"],
        "--resume: no sweep named 'smoke'",
    ),
    "--budget that is not a mapping": (
        lambda tmp: ["--space", "smoke", "--budget", "2"],
        "--budget must be a mapping like '{cpu_hours: 2}'",
    ),
    "--budget of two resources": (
        lambda tmp: ["--space", "smoke", "--budget", "{cpu_hours: 1, gpu_hours: 1}"],
        "--budget: budget needs exactly one of cpu_hours, gpu_hours",
    ),
    "--budget with a key twice": (
        lambda tmp: ["--space", "smoke", "--budget", "{cpu_hours: 1, cpu_hours: 2}"],
        "--budget: key 'cpu_hours' appears twice in one mapping",
    ),
    "--max-concurrent 0": (
        lambda tmp: ["--space", "smoke", "--max-concurrent", "0"],
        "--max-concurrent must be at least 1, got 0",
    ),
    "--max-concurrent -1": (
        lambda tmp: ["--space", "smoke", "--max-concurrent", "-1"],
        "--max-concurrent must be at least 1, got -1",
    ),
    "a key given twice on the command line": (
        lambda tmp: ["--space", "smoke", "model.bits=16", "model.bits=32"],
        "override key 'model.bits' is given twice",
    ),
    "--name too long for a file name": (
        lambda tmp: ["--space", "smoke", "--name", "a" * 300],
        "is 300 characters long; at most 100 (it names folders and files)",
    ),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_sweep_bad_input(case, tmp_path, capsys):
    make, message = SWEEP_CASES[case]
    results = tmp_path / "results"
    assert sweep_main([*make(tmp_path), "--results-dir", str(results)]) == 2
    assert message in _one_error_line(capsys, "hashtune.sweep: error:")
    assert not results.exists() or not any(results.iterdir()), "nothing may be written for a sweep that cannot start"


TRAIN_OVERRIDE_CASES = {
    "heads that do not divide the width": (
        ["model.embed_dim=10", "model.num_heads=3"],
        "model.embed_dim=10 is not divisible by model.num_heads=3",
    ),
    "patches larger than the image": (
        ["model.patch_size=16"],
        "model.patch_size=16 does not tile model.img_size=8; use a patch_size in [1, 2, 4, 8]",
    ),
    "more groups than patches": (
        ["model.patch_size=4", "model.k_groups=5", "model.bits=64"],
        "model.k_groups=5 exceeds the 4 patch tokens",
    ),
    "an infinite learning rate": (["train.lr=inf"], "train.lr: expected a finite number, got inf"),
    "a warmup the run never finishes": (
        ["train.epochs=2", "train.warmup_epochs=2"],
        "train.warmup_epochs=2 is not below train.epochs=2: the learning rate would never reach train.lr; give "
        "train.warmup_epochs in [0, 1]",
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_OVERRIDE_CASES))
def test_train_refuses_inconsistent_config_before_writing(case, tmp_path, capsys):
    overrides, message = TRAIN_OVERRIDE_CASES[case]
    out = tmp_path / "run"
    assert train_main(["--out", str(out), "--no-progress", *with_overrides(TINY, overrides)]) == 2
    assert message in _one_error_line(capsys, "hashtune.train: error:")
    assert not out.exists()


def test_train_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("model:\n  bits: 32  # d\xe9faut\n".encode("latin-1"))
    assert train_main(["--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    assert f"config file {config} is not UTF-8" in _one_error_line(capsys, "hashtune.train: error:")


def test_train_out_is_never_a_file_nor_another_run(tmp_path, capsys):
    file_out = tmp_path / "file"
    file_out.write_text("precious")
    assert train_main(["--out", str(file_out), *TINY]) == 2
    assert "is a file" in _one_error_line(capsys, "hashtune.train: error:")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {bits: 64}\n")
    assert train_main(["--out", str(run), *TINY]) == 2
    assert "already holds a run; continue it with --resume" in _one_error_line(capsys, "hashtune.train: error:")
    assert file_out.read_text() == "precious" and (run / "config.yaml").read_text() == "model: {bits: 64}\n"


SPACE_TEXT_CASES = {
    "mode that is not max or min": (
        "mode: maximize\nvariants: {full: {}}\n",
        "mode must be one of max, min, got 'maximize'",
    ),
    "two variants of one name": (
        "variants:\n  w/o Q: {loss.quant_weight: 0.0}\n  w/o Q: {loss.cls_weight: 0.0}\n",
        "key 'w/o Q' appears twice",
    ),
    "variants as a list": ("variants: [full, w/o Q]\n", "variants must be a mapping"),
    "params as a list": ("params: [model.bits]\n", "params must be a mapping"),
    "fixed as a list": ("fixed: [train.epochs]\nvariants: {full: {}}\n", "fixed must be a mapping"),
    "num_samples that is not a number": (
        "search: tpe\nnum_samples: lots\nparams: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}\n",
        "num_samples must be an integer >= 1, got 'lots'",
    ),
    "a variant infeasible where others run": (
        "fixed: {model.bits: 16}\nvariants:\n  full: {model.k_groups: 4}\n  w/o P: {model.dual_stream: false}\n",
        "variant 'full' has an infeasible model.bits/model.k_groups allocation at 'seed=0'",
    ),
    "a seed listed twice": ("seeds: [0, 0]\nvariants: {full: {}}\n", "seeds [0] appear more than once in [0, 0]"),
    "a grid value listed twice": (
        "params: {model.k_groups: {grid: [1, 2, 1]}}\n",
        "params.model.k_groups: grid lists 1 more than once",
    ),
    "a grid of 2.6e10 points (counted, not expanded)": (
        "params:\n"
        + "".join(
            f"  {key}: {{grid: [{', '.join(str(round(0.01 * (i + 1), 2)) for i in range(20))}]}}\n"
            for key in (
                "loss.gamma",
                "loss.quant_weight",
                "loss.cls_weight",
                "loss.gamma_a",
                "train.lr",
                "train.weight_decay",
                "train.grad_clip",
                "model.drop_path_rate",
            )
        ),
        "the grid has 25,600,000,000 points (1 x 1 x 20 x 20 x 20 x 20 x 20 x 20 x 20 x 20",
    ),
    "a warmup longer than one variant's epochs": (
        "fixed: {train.warmup_epochs: 5}\nvariants:\n  full: {}\n  short: {train.epochs: 3}\n",
        "train.warmup_epochs=5 is not below train.epochs=3",
    ),
    "a warmup longer than the fewest epochs searched": (
        "search: grid\nparams: {train.epochs: {grid: [4, 300]}}\n",
        "train.warmup_epochs=10 is not below train.epochs=4",
    ),
    "YAML aliases (billion laughs)": (
        'a: &a ["lol", "lol"]\nb: &b [*a, *a]\nc: [*b, *b]\n',
        "alias *a on line 2: aliases are not accepted",
    ),
}


@pytest.mark.parametrize("case", list(SPACE_TEXT_CASES))
def test_sweep_refuses_bad_space_before_writing(case, tmp_path, capsys):
    text, message = SPACE_TEXT_CASES[case]
    results = tmp_path / "results"
    assert sweep_main(["--space", _space(tmp_path, text), "--results-dir", str(results)]) == 2
    assert message in _one_error_line(capsys, "hashtune.sweep: error:")
    assert not results.exists()


def test_sweep_refuses_a_space_that_is_not_utf8_and_a_name_outside_results(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: d\xe9faut\nvariants: {full: {}}\n".encode("latin-1"))
    assert sweep_main(["--space", str(path), "--results-dir", str(tmp_path / "results")]) == 2
    assert "not UTF-8 text" in _one_error_line(capsys, "hashtune.sweep: error:")
    assert sweep_main(["--space", "smoke", "--name", "../../x", "--results-dir", str(tmp_path / "results")]) == 2
    assert "--name '../../x' may hold only letters" in _one_error_line(capsys, "hashtune.sweep: error:")
    assert not (tmp_path / "results").exists() and not (tmp_path.parent / "x").exists()


def test_second_sweep_of_a_name_is_refused_with_the_holders_pid(tmp_path, capsys):
    import os

    from hashtune.sweep.options import SweepOptions
    from hashtune.sweep.space import load_space
    from hashtune.sweep.stores import resolve_stores, sweep_lock

    with sweep_lock(resolve_stores(SweepOptions("smoke", results_dir=tmp_path), load_space("smoke"))):
        assert sweep_main(["--space", "smoke", "--results-dir", str(tmp_path)]) == 2
    assert f"sweep 'smoke' is already running (pid {os.getpid()})" in _one_error_line(capsys, "hashtune.sweep: error:")
    assert not (tmp_path / "ray").exists()


def test_two_drivers_creating_one_new_store_at_once_both_succeed(tmp_path):
    """Without the store lock, two sweeps starting on a new SQLite store race MLflow's migrations."""
    import sqlite3
    import subprocess
    import sys

    code = (
        "import sys, time; from hashtune.sweep.space import load_space; "
        "from hashtune.sweep.options import SweepOptions; "
        "from hashtune.sweep.stores import open_tracking, resolve_stores; "
        "options = SweepOptions('smoke', name=sys.argv[1], results_dir=sys.argv[2]); "
        "stores = resolve_stores(options, load_space('smoke')); "
        "[time.sleep(0.01) for _ in iter(lambda: (stores.results_dir / 'go').exists(), True)]; open_tracking(stores)"
    )
    drivers = [
        subprocess.Popen([sys.executable, "-c", code, name, str(tmp_path)], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    (tmp_path / "go").touch()
    for driver in drivers:
        _, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err[-2000:]
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "mlflow.db").execute("select name from sqlite_master where type='table'")
    }
    assert "runs" in tables and not any(name.startswith("_alembic_tmp") for name in tables)


def test_a_ray_temp_dir_too_long_for_rays_sockets_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    long_dir = tmp_path / ("x" * 40)  # Ray's dashboard would die on its first module socket under it
    monkeypatch.setenv("RAY_TMPDIR", str(long_dir))
    results = tmp_path / "results"
    assert sweep_main(["--space", "smoke", "--results-dir", str(results)]) == 2
    line = _one_error_line(capsys, "hashtune.sweep: error:")
    assert (
        f"Ray's temp dir '{long_dir}/ray' is too long for its Unix sockets" in line
        and "set RAY_TMPDIR to a folder of at most" in line
    )
    assert train_main(["--out", str(tmp_path / "run"), "--workers", "1", "--no-progress", *TINY]) == 2
    assert "is too long for its Unix sockets" in _one_error_line(capsys, "hashtune.train: error:")
    assert not results.exists() and not long_dir.exists()


def test_budget_on_the_command_line_reads_numbers_as_a_space_file_does():
    from hashtune.sweep.cli import _with_budget
    from hashtune.sweep.space import load_space

    assert _with_budget(load_space("smoke"), "{cpu_hours: 1e-3}").budget.hours == 0.001  # YAML 1.1 read a string


def test_resume_refuses_tune_state_and_an_mlflow_store_of_different_sweeps(tmp_path, capsys):
    from mlflow import MlflowClient

    storage = tmp_path / "ray"
    (storage / "smoke").mkdir(parents=True)
    (storage / "smoke" / "tuner.pkl").write_bytes(
        b""
    )  # what Tune.can_restore looks for: Tune's state of a sweep 'smoke'
    elsewhere = tmp_path / "elsewhere"
    argv = ["--space", "smoke", "--resume", "--results-dir", str(elsewhere), "--storage", str(storage)]
    assert sweep_main(argv) == 2  # an empty MLflow store: every trial would run again, untracked
    line = _one_error_line(capsys, "hashtune.sweep: error:")
    assert (
        f"Tune's state of sweep 'smoke' is at {storage}/smoke, but the MLflow store sqlite:///{elsewhere}/mlflow.db "
        "holds no run" in line
    )
    client = MlflowClient(
        f"sqlite:///{elsewhere / 'mlflow.db'}"
    )  # a store whose sweep 'smoke' kept its Tune state elsewhere
    client.create_run(
        client.create_experiment("smoke"), tags={"hashtune.role": "sweep", "hashtune.storage": "/other/smoke"}
    )
    assert sweep_main(argv) == 2
    assert f"has sweep 'smoke' with its Tune state at /other/smoke, not at {storage}/smoke" in _one_error_line(
        capsys, "hashtune.sweep: error:"
    )
