"""Export a finished run as a bundle and retrieve with it: same codes in a fresh process, exact --eval, one-line
errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from images import digit_pngs, png_header_only
from PIL import Image

from hashtune.config import load_config
from hashtune.data import load_source
from hashtune.metrics import pack_codes, unpack_codes
from hashtune.retrieval import Retriever, evaluate_bundle
from hashtune.retrieval.bundle import BundleError, verify_bundle
from hashtune.retrieval.cli import main as retrieve_main
from hashtune.retrieval.export import export_bundle
from hashtune.retrieval.export import main as export_main
from hashtune.train.checkpoint import load_checkpoint
from hashtune.train.trainer import fit

TINY = [
    "model.depth=1",
    "model.embed_dim=16",
    "train.warmup_epochs=0",
    "model.num_heads=2",
    "train.epochs=2",
    "train.eval_every=1",
    "model.bits=24",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    metrics = fit(load_config(overrides=TINY), run_dir=root / "run")
    assert export_main(["--run-dir", str(root / "run"), "--out", str(root / "bundle")]) == 0
    return root / "bundle", metrics


def test_pack_and_unpack_round_trip_with_padding():
    codes = np.where(np.random.default_rng(0).standard_normal((7, 12)) >= 0, 1.0, -1.0)
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (7, 2)
    assert np.array_equal(unpack_codes(packed, 12), codes)


def test_eval_recomputes_the_runs_test_map_exactly(bundle, capsys):
    folder, metrics = bundle
    assert evaluate_bundle(folder) == pytest.approx(metrics["test/mAP"], abs=1e-12)
    assert retrieve_main(["--bundle", str(folder), "--eval"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["equal"] is True and report["run_test_mAP"] == pytest.approx(metrics["test/mAP"])
    manifest = verify_bundle(folder)
    assert manifest["bits"] == 24 and sum(manifest["head_bits"]) == 24 and manifest["num_database"] == 1297


def test_fresh_process_gives_the_stored_codes_for_the_same_images(bundle, tmp_path):
    folder, _ = bundle
    paths = digit_pngs(folder, tmp_path)
    script = (
        "import sys, json; from hashtune.retrieval import Retriever; "
        "r = Retriever.load(sys.argv[1]); print(json.dumps(r.encode(sys.argv[2:]).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder), *paths], capture_output=True, text=True, check=True
    ).stdout
    stored = np.load(folder / "query_codes.npy")[: len(paths)]
    assert np.array_equal(np.array(json.loads(out.strip().splitlines()[-1]), dtype=np.uint8), stored)


def test_search_radius_and_add(bundle):
    folder, _ = bundle
    retriever = Retriever.load(folder)
    database = np.load(folder / "database_codes.npy")
    result = retriever.search(database[:3], k=5)
    assert result.ids.shape == (3, 5) and result.labels.shape == (3, 5, 10)
    assert (result.distances[:, 0] == 0).all() and (np.diff(result.distances, axis=1) >= 0).all()
    # brute-force Hamming distances agree with faiss
    brute = np.bitwise_count(database[:3, None, :] ^ database[None, :, :]).sum(-1)
    assert np.array_equal(np.sort(brute, axis=1)[:, :5], result.distances)
    within = retriever.search_radius(database[:2], 2)
    for i, found in enumerate(within):
        assert sorted(found.distances[0].tolist()) == sorted(brute[i][brute[i] <= 2].tolist())
    size = len(retriever)
    retriever.add(database[:2] ^ 0xFF, ids=[10_001, 10_002])
    assert len(retriever) == size + 2
    assert retriever.search(database[:1] ^ 0xFF, k=1).ids[0, 0] == 10_001


def test_a_refused_add_leaves_the_database_as_it_was():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (20, 4), dtype=np.uint8)
    retriever = Retriever.from_codes(codes, 32, labels=np.eye(20, 3, dtype=np.uint8))
    queries = codes[:3] ^ 1
    before = retriever.search(queries, k=5)
    refused = {
        "an id already in the database": ([5, 100], None, "id 5 is already in the database"),
        "an id twice in one call": ([5000, 5000], None, "id 5000 is given twice in one add"),
        "fewer ids than codes": ([100], None, "got 2 images but 1 ids"),
        "labels of the wrong width": (
            [100, 101],
            np.zeros((2, 5)),
            "labels must have shape (2, 3) for 2 ids, got (2, 5)",
        ),
        "an id that is neither int nor str": ([1.5, 101], None, "an id is an int or a str, got float 1.5"),
    }
    for case, (ids, labels, message) in refused.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            retriever.add(codes[:2] ^ 0xFF, ids=ids, labels=labels)
        after = retriever.search(queries, k=5)
        assert len(retriever) == 20 and len(retriever.ids) == 20 and len(retriever.labels) == 20, case
        assert np.array_equal(after.ids, before.ids) and np.array_equal(after.distances, before.distances), case
    retriever.add(codes[:2] ^ 0xFF, ids=["a", "b"])  # the README's example: string ids beside integer ones
    found = retriever.search(codes[:1] ^ 0xFF, k=1)
    assert len(retriever) == 22 and found.ids[0, 0] == "a" and retriever.ids[:20].tolist() == list(range(20))


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(bundle, tmp_path, capsys):
    folder, _ = bundle
    huge = png_header_only(tmp_path / "huge.png", 12_000, 12_000)  # decoded before the limit: +593 MB
    assert retrieve_main(["--bundle", str(folder), "--image", str(huge)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is 12000 x 12000 = 144,000,000 pixels; at most 40,000,000 are decoded" in line
    bomb = png_header_only(tmp_path / "bomb.png", 30_000, 30_000)  # PIL's own refusal comes first: one line too
    assert retrieve_main(["--bundle", str(folder), "--image", str(bomb)]) == 2
    assert "is refused before decoding" in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_json_shape(bundle, tmp_path, capsys):
    folder, _ = bundle
    paths = digit_pngs(folder, tmp_path, count=2)
    assert retrieve_main(["--bundle", str(folder), "--image", paths[0], "--image", paths[1], "-k", "3", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["k"] == 3 and len(output["results"]) == 2
    entry = output["results"][0]
    assert entry["image"] == paths[0] and len(entry["code"]) == 6  # 24 bits = 3 bytes in hex
    assert [set(n) for n in entry["neighbours"]] == [{"id", "distance", "labels"}] * 3
    assert isinstance(entry["neighbours"][0]["id"], int) and len(entry["neighbours"][0]["labels"]) == 1


def test_tampered_or_missing_bundle_is_one_line(bundle, tmp_path, capsys):
    folder, _ = bundle
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
    codes = np.load(copy / "database_codes.npy")
    codes[0, 0] ^= 1
    np.save(copy / "database_codes.npy", codes)
    with pytest.raises(BundleError, match="database_codes.npy does not match its manifest checksum"):
        Retriever.load(copy)
    assert retrieve_main(["--bundle", str(copy), "--eval"]) == 2
    assert retrieve_main(["--bundle", str(tmp_path / "nowhere"), "--image", "x.png"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert (
        len(errors) == 2
        and "does not match its manifest checksum" in errors[0]
        and "does not exist: not a hashtune bundle" in errors[1]
    )


def test_export_refuses_to_overwrite_and_bad_images_are_one_line(bundle, tmp_path, capsys):
    folder, _ = bundle
    state = load_checkpoint(folder.parent / "run")
    from hashtune.retrieval.export import ExportError

    with pytest.raises(ExportError, match="already exists"):
        export_bundle(state, folder)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert retrieve_main(["--bundle", str(folder), "--image", str(broken)]) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("ray-export")
def test_export_best_run_of_a_finished_sweep(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient
    from ray_helpers import short_temp_dir

    from hashtune.sweep.cli import main as sweep_main

    monkeypatch.setenv("RAY_TMPDIR", short_temp_dir())
    assert sweep_main(["--space", "smoke", "--results-dir", str(tmp_path)]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        export_main(
            ["--experiment", "smoke", "--mlflow-uri", uri, "--metric", "test/mAP", "--out", str(tmp_path / "b")]
        )
        == 2
    )
    assert "would select on non-validation data" in capsys.readouterr().err
    assert export_main(["--experiment", "smoke", "--mlflow-uri", uri, "--out", str(tmp_path / "bundle")]) == 0
    client = MlflowClient(uri)
    runs = [
        r
        for r in client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
        if r.data.tags.get("hashtune.status") == "finished"
    ]
    best = max(runs, key=lambda run: run.data.metrics["val/best_mAP"])
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest["provenance"]["mlflow_run_id"] == best.info.run_id
    assert evaluate_bundle(tmp_path / "bundle") == pytest.approx(best.data.metrics["test/mAP"], abs=1e-12)
    assert "bundle/manifest.json" in {a.path for a in client.list_artifacts(best.info.run_id, "bundle")}
    versions = client.search_model_versions("name = 'hashtune'")
    assert [v.run_id for v in versions] == [best.info.run_id]
    # a constraint on what the trainer logs with every run (the multi-objective costs), chosen on val/best_mAP
    picked = ["--experiment", "smoke", "--mlflow-uri", uri, "--pick", "code/bits<=32", "--pick", "cost/encode_ms>0"]
    assert export_main([*picked, "--out", str(tmp_path / "picked")]) == 0
    assert verify_bundle(tmp_path / "picked")["provenance"]["mlflow_run_id"] == best.info.run_id
    capsys.readouterr()
    assert export_main([*picked[:4], "--pick", "code/bits<=16", "--out", str(tmp_path / "none")]) == 2
    assert "has no finished trial run with val/best_mAP with code/bits <= 16" in capsys.readouterr().err


def _copy_bundle(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def _rewrite_manifest(folder, edit):
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_names_only_plain_files_inside_the_bundle(bundle, tmp_path):
    import hashlib

    folder = _copy_bundle(bundle[0], tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    for entry in ("../outside.txt", str(outside), "/etc/hostname"):
        _rewrite_manifest(folder, lambda files: files.update({entry: digest}))
        with pytest.raises(BundleError, match="not a plain file name inside the bundle") as refused:
            verify_bundle(folder)
        assert str(tmp_path) not in str(refused.value).replace(str(folder), "")  # never names a path outside
        _rewrite_manifest(folder, lambda files: files.pop(entry))


def test_every_file_the_retriever_reads_is_listed_and_checked(bundle, tmp_path):
    folder = _copy_bundle(bundle[0], tmp_path)
    ids = np.load(folder / "database_ids.npy")
    np.save(folder / "database_ids.npy", ids[::-1])  # reversed ids: wrong neighbours if it were read unchecked
    _rewrite_manifest(folder, lambda files: files.pop("database_ids.npy"))
    with pytest.raises(BundleError, match="the manifest does not list database_ids.npy"):
        Retriever.load(folder)


def test_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    folder = _copy_bundle(bundle[0], tmp_path)
    outside = tmp_path / "ids.npy"
    (folder / "database_ids.npy").rename(outside)
    (folder / "database_ids.npy").symlink_to(outside)  # same bytes, same hash, but outside the folder
    with pytest.raises(BundleError, match="database_ids.npy listed in the manifest is missing or not a regular file"):
        verify_bundle(folder)


def test_radius_is_bounded_by_the_code_length(bundle, tmp_path, capsys):
    folder, _ = bundle
    image = digit_pngs(folder, tmp_path, count=1)[0]
    assert retrieve_main(["--bundle", str(folder), "--image", str(image), "--radius", "100000000000"]) == 2
    assert (
        "radius must be in [0, 24] for 24-bit codes, got 100000000000"
        in capsys.readouterr().err.strip().splitlines()[-1]
    )


def test_queries_of_any_size_and_bit_depth_are_read_as_training_read_them(bundle, tmp_path):
    folder, _ = bundle
    retriever = Retriever.load(folder)
    eight_bit = digit_pngs(folder, tmp_path, count=3)
    sixteen_bit = []
    for path in eight_bit:
        pixels = np.asarray(Image.open(path), dtype=np.uint16) * 257  # the same image at 16 bits
        sixteen_bit.append(tmp_path / f"{Path(path).stem}_16.png")
        Image.fromarray(pixels).save(sixteen_bit[-1])
    assert Image.open(sixteen_bit[0]).mode.startswith("I")
    assert np.array_equal(retriever.encode(sixteen_bit), retriever.encode(eight_bit))
    assert np.array_equal(
        retriever.encode([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in eight_bit]),
        retriever.encode(eight_bit),
    )
    large, rgb = tmp_path / "large.png", tmp_path / "rgb.png"
    Image.open(eight_bit[0]).resize((24, 24), Image.NEAREST).save(
        large
    )  # any size: resized by the bundle's eval transform
    Image.open(eight_bit[0]).convert("RGB").save(rgb)  # RGB into a grey model: PIL's luma, as training would read it
    assert retriever.search([large, rgb], k=3).ids.shape == (2, 3)
    assert np.array_equal(retriever.encode([rgb]), retriever.encode(eight_bit[:1]))


def clustered_codes(n: int, bits: int = 64, centres: int = 200, flip: float = 0.05, seed: int = 0) -> np.ndarray:
    """Packed codes drawn around a few centres with bit-flip noise: neighbours exist, as for real hash codes."""
    rng = np.random.default_rng(seed)
    centre_bits = rng.random((centres, bits)) < 0.5
    members = centre_bits[rng.integers(0, centres, n)] ^ (rng.random((n, bits)) < flip)
    return np.packbits(members, axis=1)


def tie_aware_recall(found_distances: np.ndarray, exact_distances: np.ndarray) -> float:
    """A returned item counts when its distance is at most the exact k-th distance (64-bit codes tie a lot)."""
    kth = exact_distances[:, -1:]
    return float((found_distances <= kth).mean())


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours_on_clustered_codes(kind):
    codes, queries = clustered_codes(20_000), clustered_codes(200, seed=1)
    exact = Retriever.from_codes(codes, 64).search(queries, k=10)
    approximate = Retriever.from_codes(codes, 64, index=kind).search(queries, k=10)
    assert tie_aware_recall(approximate.distances, exact.distances) >= 0.9


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_each_index_type_round_trips_through_a_bundle(bundle, tmp_path, kind):
    folder = tmp_path / kind
    run_dir = bundle[0].parent / "run"
    assert export_main(["--run-dir", str(run_dir), "--out", str(folder), "--index", kind, "--nlist", "8"]) == 0
    manifest = verify_bundle(folder)
    assert manifest["index"]["type"] == kind and (kind != "ivf" or manifest["index"]["nlist"] == 8)
    flat, approximate = Retriever.load(bundle[0]), Retriever.load(folder)
    queries = np.load(folder / "query_codes.npy")[:20]
    assert approximate.search(queries, k=5).ids.shape == (20, 5)
    assert tie_aware_recall(approximate.search(queries, k=5).distances, flat.search(queries, k=5).distances) >= 0.9
    assert evaluate_bundle(folder) == evaluate_bundle(bundle[0])  # --eval reads the stored codes, not the index


def test_more_ivf_lists_than_database_codes_are_refused_before_encoding(bundle, tmp_path, capsys):
    folder = tmp_path / "ivf"
    assert (
        export_main(
            ["--run-dir", str(bundle[0].parent / "run"), "--out", str(folder), "--index", "ivf", "--nlist", "100000"]
        )
        == 2
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        line.startswith("hashtune.export: error: --nlist 100,000 exceeds the 1,297 database codes")
        and "give at most 33" in line
    )
    assert not folder.exists()


def test_a_run_id_of_another_experiment_is_refused(tmp_path):
    from mlflow import MlflowClient

    from hashtune.retrieval.export import ExportError, best_run

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("ablations")
    run = client.create_run(client.create_experiment("tune"))
    assert best_run(client, "tune", run_id=run.info.run_id).info.run_id == run.info.run_id
    with pytest.raises(
        ExportError,
        match=f"--run-id {run.info.run_id} belongs to experiment 'tune', not 'ablations'; give --experiment tune",
    ):
        best_run(client, "ablations", run_id=run.info.run_id)


def test_an_index_file_that_disagrees_with_its_manifest_is_refused(bundle, tmp_path):
    import hashlib

    import faiss

    folder = _copy_bundle(bundle[0], tmp_path)
    other = Retriever.from_codes(np.load(folder / "database_codes.npy"), 24, index="hnsw").index
    faiss.write_index_binary(other, str(folder / "index.faiss"))  # a consistent checksum, the wrong index
    _rewrite_manifest(
        folder,
        lambda files: files.update({"index.faiss": hashlib.sha256((folder / "index.faiss").read_bytes()).hexdigest()}),
    )
    with pytest.raises(BundleError, match="index.faiss is a hnsw index of .* codes, the manifest says flat"):
        Retriever.load(folder)


def test_thumbnails_are_checksummed_and_shown_beside_the_neighbours(bundle, tmp_path):
    folder, _ = bundle
    out = tmp_path / "with_thumbnails"
    export_bundle(load_checkpoint(folder.parent / "run"), out, thumbnails=True)
    assert "thumbnails.npy" in verify_bundle(out)["files"]
    thumbnails, ids = np.load(out / "thumbnails.npy"), np.load(out / "database_ids.npy")
    assert np.array_equal(thumbnails, load_source("digits").pixels[ids])  # digits keep their own 8 x 8 pixels
    queries = digit_pngs(out, tmp_path, 2)
    show = tmp_path / "show.png"
    argv = ["--bundle", str(out), "--image", queries[0], "--image", queries[1], "-k", "4", "--show", str(show)]
    assert retrieve_main(argv) == 0
    width, height = Image.open(show).size
    assert width > height > 200  # two rows of query + 4 neighbours
    thumbnails[0] = 255 - thumbnails[0]
    np.save(out / "thumbnails.npy", thumbnails)
    with pytest.raises(BundleError, match="thumbnails.npy does not match its manifest checksum"):
        verify_bundle(out)


def test_thumbnails_of_image_files_are_square_crops(listfile_root):
    from hashtune.data.datasets import HashingDataset
    from hashtune.retrieval.thumbnails import make_thumbnails

    source = load_source("listfile", listfile_root)
    dataset = HashingDataset(source, np.arange(3), transform=None)
    thumbnails = make_thumbnails(dataset, size=16)
    assert thumbnails.shape == (3, 16, 16, 3) and thumbnails.dtype == np.uint8


def test_an_alias_needs_a_registered_version(bundle, tmp_path, capsys):
    run = str(bundle[0].parent / "run")
    assert export_main(["--run-dir", run, "--alias", "champion", "--out", str(tmp_path / "b")]) == 2
    assert "--alias names a registered model version: give --experiment" in capsys.readouterr().err
    assert export_main(["--experiment", "e", "--alias", "latest", "--out", str(tmp_path / "b")]) == 2
    assert "--alias 'latest' is not a model alias" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
