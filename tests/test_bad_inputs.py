"""Every bad input through the CLIs: one line on stderr naming the value, a non-zero exit, nothing half-written."""

import pytest
import torch

from conftest import write_cifar_folder, write_listfile_folder
from hashtune.train.model import create_backbone
from hashtune.sweep.cli import main as sweep_main
from hashtune.train.cli import main as train_main

TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "train.epochs=1"]


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
    torch.save(create_backbone("vit_tiny_patch16_224", img_size=8, patch_size=2, depth=1, embed_dim=32, num_heads=2, in_chans=1).state_dict(), path)
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
}


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
    "unknown key in a space": (lambda tmp: ["--space", _space(tmp, "params: {model.bitz: {grid: [16]}}\n")], "unknown config key 'model.bitz'"),
    "K/bits infeasible for every point": (
        lambda tmp: ["--space", _space(tmp, "params: {model.k_groups: {grid: [5, 6]}, model.bits: {grid: [16]}}\n")],
        "every one of the 2 grid points has an infeasible"),
    "unknown override key": (lambda tmp: ["--space", "smoke", "optim.lr=3"], "unknown config key 'optim.lr'"),
    "unreachable MLflow URI": (lambda tmp: ["--space", "smoke", "--mlflow-uri", "http://127.0.0.1:9"], "MLflow tracking URI 'http://127.0.0.1:9' is unreachable"),
    "--resume of a sweep that does not exist": (lambda tmp: ["--space", "smoke", "--resume"], "--resume: no sweep named 'smoke'"),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_sweep_bad_input(case, tmp_path, capsys):
    make, message = SWEEP_CASES[case]
    results = tmp_path / "results"
    assert sweep_main([*make(tmp_path), "--results-dir", str(results)]) == 2
    assert message in _one_error_line(capsys, "hashtune.sweep: error:")
    assert not results.exists() or not any(results.iterdir()), "nothing may be written for a sweep that cannot start"
