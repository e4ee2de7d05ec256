"""The layout keeps its promises: light imports, small functions and modules, a wheel with the spaces, docs that cite
real tests, a README whose key list is the config's, results without machine paths."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hashtune.config import Config, to_flat_dict

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hashtune"
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400


def test_light_modules_load_neither_ray_nor_torch():
    code = (
        "import sys, hashtune.config, hashtune.sweep.space, hashtune.report, hashtune.metrics, hashtune.tracking\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'timm', 'torchvision'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_what_builds_a_torch_trainer_loads_no_trainer():
    """A sweep's trial with `workers: N` builds the `TorchTrainer` and does not train: importing
    `hashtune.train.distributed` loads torch but not the trainer, timm or the plots."""
    code = (
        "import sys, hashtune.train.distributed\n"
        "print(sorted({m for m in sys.modules} & {'timm', 'torchvision', 'matplotlib', 'hashtune.train.trainer'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_over_60_lines_and_no_module_over_400():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{relative}: {lines} lines")
        too_long += [f"{relative}:{name}: {n} lines" for name, n in _functions(path) if n > MAX_FUNCTION_LINES]
    assert not too_long, "split these:\n" + "\n".join(too_long)


def test_readme_key_list_is_the_configs_keys():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Configuration") : readme.index("### Search spaces")]
    listed = set(re.findall(r"`((?:data|model|loss|train|eval)\.[a-z_]+)`", section))
    assert listed == set(to_flat_dict(Config()))


def test_results_hold_no_machine_paths():
    """What the repository commits under results/ (the local stores a sweep writes there are git-ignored)."""
    tracked = subprocess.run(
        ["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = [
        name
        for name in tracked
        if name.endswith((".md", ".csv", ".json"))
        and re.search(r"(/work/|/home/|/tmp/|/root/)[A-Za-z]", (ROOT / name).read_text())
    ]
    assert tracked and not offenders


def test_the_docs_name_only_tests_that_exist():
    """README and results/ cite tests as evidence (`tests/test_x.py::test_y`, then `::test_z` for another test of
    the same file): a renamed or merged test must not leave a citation of nothing behind."""
    documents = [ROOT / "README.md", *(ROOT / "results").rglob("*.md"), *(ROOT / "clusters").glob("*.md")]
    cited = set()
    for path in documents:
        for file, names in re.findall(r"(tests/test_\w+\.py)((?:::test_\w+`?(?:, `)?)+)", path.read_text()):
            cited |= {(file, name) for name in re.findall(r"::(test_\w+)", names)}
    missing = [
        f"{file}::{name}"
        for file, name in sorted(cited)
        if not re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M)
    ]
    assert cited and not missing, missing


@pytest.mark.slow
def test_wheel_ships_every_space_and_resolves_them_outside_the_repo(tmp_path):
    import shutil

    source, wheels = (
        tmp_path / "source",
        tmp_path / "wheels",
    )  # built from a copy: setuptools writes build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "hashtune", "search_spaces"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheels.glob("hashtune-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"hashtune/search_spaces/{path.name}" for path in (ROOT / "search_spaces").glob("*.yaml")}
    assert shipped and shipped <= names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = "import hashtune.sweep.space as s; print(s.load_space('ablations').name, s.__file__)"
    found = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found[0] == "ablations" and found[1].startswith(str(site))


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    tree = layout[layout.index("```") : layout.index("```", layout.index("```") + 3)]
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", tree))
    modules = [path for path in PACKAGE.rglob("*.py") if path.stem not in ("__init__", "__main__")]
    assert sorted(str(path.relative_to(ROOT)) for path in modules if path.stem not in named) == []
