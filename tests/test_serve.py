"""The retrieval service: request checks (no Ray), the CLI's refusals, and one real Ray Serve service
(registry + alias + token) exercised as a client and a browser would, through a model update."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from images import digit_pngs, png_header_only

from benchmarks.servers import free_port
from hashtune.config import load_config
from hashtune.retrieval import Retriever
from hashtune.retrieval.cli import main as retrieve_main
from hashtune.retrieval.export import main as export_main
from hashtune.serve.cli import main as serve_main
from hashtune.serve.inputs import Limits, RequestError, check_length, decode_image, images_from_json, search_options
from hashtune.serve.service import ServedBundle
from hashtune.train.trainer import fit

TINY = ["model.depth=1", "model.embed_dim=16", "model.num_heads=2", "train.warmup_epochs=0", "train.eval_every=1"]
LIMITS = Limits(max_bytes=10_000, max_pixels=1_000_000, max_images=4)


def _status(call) -> tuple[int, str]:
    with pytest.raises(RequestError) as refused:
        call()
    assert "\n" not in str(refused.value)
    return refused.value.status, str(refused.value)


def test_sizes_are_refused_before_the_body_or_the_pixels_are_read(tmp_path):
    assert _status(lambda: check_length(None, LIMITS))[0] == 411
    assert _status(lambda: check_length("12x", LIMITS)) == (400, "Content-Length '12x' is not a number of bytes")
    assert _status(lambda: check_length("0", LIMITS))[0] == 400
    assert _status(lambda: check_length("10001", LIMITS)) == (
        413,
        "the request body is 10,001 bytes, over the limit of 10,000",
    )
    assert check_length("10000", LIMITS) == 10_000
    huge = png_header_only(tmp_path / "huge.png", 12_000, 12_000).read_bytes()  # decoded: +144 MB
    assert len(huge) < 100
    assert _status(lambda: decode_image(huge, "huge.png", LIMITS)) == (
        413,
        "huge.png is 12000 x 12000 = 144,000,000 pixels, over the limit of 1,000,000; refused before decoding "
        "(resize it first)",
    )
    bomb = png_header_only(tmp_path / "bomb.png", 30_000, 30_000).read_bytes()  # PIL's own refusal comes first
    status, message = _status(lambda: decode_image(bomb, "bomb.png", LIMITS))
    assert status == 413 and message.startswith("bomb.png is refused before decoding")


def test_bad_images_are_one_line_each(tmp_path):
    png = Path(digit_pngs(Path(_bundle_for_inputs(tmp_path)), tmp_path, 1)[0]).read_bytes()
    assert decode_image(png, "ok.png", LIMITS).size == (8, 8)
    assert _status(lambda: decode_image(b"", "empty.png", LIMITS))[1].startswith("empty.png is empty")
    assert "is not an image (11 bytes)" in _status(lambda: decode_image(b"hello world", "x.txt", LIMITS))[1]
    assert "cannot be decoded (truncated" in _status(lambda: decode_image(png[: len(png) // 2], "cut.png", LIMITS))[1]


def _bundle_for_inputs(tmp_path: Path) -> Path:
    """A folder holding only query_ids.npy: what `digit_pngs` reads."""
    np.save(tmp_path / "query_ids.npy", np.array([3]))
    return tmp_path


def test_json_bodies_and_search_options():
    image = base64.b64encode(b"\x89PNG...").decode()
    assert images_from_json(json.dumps({"images": [image], "k": 3}).encode(), LIMITS) == ([b"\x89PNG..."], {"k": 3})
    assert images_from_json(json.dumps({"image": "data:image/png;base64," + image}).encode(), LIMITS)[0] == [
        b"\x89PNG..."
    ]
    assert "not valid JSON" in _status(lambda: images_from_json(b"{nope", LIMITS))[1]
    assert "is a list" in _status(lambda: images_from_json(b"[]", LIMITS))[1]
    assert "must be a list of base64 strings" in _status(lambda: images_from_json(b'{"images": 3}', LIMITS))[1]
    assert "JSON image 1 is not valid base64" in _status(lambda: images_from_json(b'{"images": ["@@"]}', LIMITS))[1]
    assert _status(lambda: images_from_json(json.dumps({"images": [image] * 5}).encode(), LIMITS)) == (
        413,
        "the request holds 5 images, over the limit of 4 per request",
    )
    assert _status(lambda: images_from_json(b'{"images": []}', LIMITS))[0] == 400
    assert search_options({}, 100, 32) == (10, None)
    assert search_options({"k": "7"}, 100, 32) == (7, None)
    assert search_options({"radius": 2}, 100, 32) == (10, 2)
    for fields, message in (
        ({"k": 0}, "k must be in [1, 100] (the database size), got 0"),
        ({"k": 101}, "k must be in [1, 100] (the database size), got 101"),
        ({"k": "ten"}, "k must be an integer, got 'ten'"),
        ({"k": True}, "k must be an integer, got True"),
        ({"radius": 33}, "radius must be in [0, 32] for 32-bit codes, got 33"),
        ({"radius": -1}, "radius must be in [0, 32] for 32-bit codes, got -1"),
        ({"k": 3, "radius": 1}, "give k or radius, not both"),
    ):
        assert _status(lambda: search_options(fields, 100, 32)) == (422, message)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two tiny runs in a SQLite MLflow store, the first exported as version 1 of `hashtune` under alias champion."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("served", artifact_location=(root / "artifacts").as_uri())
    runs = []
    for number, bits in ((1, 24), (2, 32)):
        overrides = [*TINY, f"train.epochs={number}", f"model.bits={bits}"]
        metrics = fit(load_config(overrides=overrides), run_dir=root / f"run{number}")
        run = client.create_run(experiment)
        client.set_tag(run.info.run_id, "hashtune.checkpoint", str(root / f"run{number}"))
        client.log_metric(run.info.run_id, "val/best_mAP", metrics["val/best_mAP"])
        runs.append(run.info.run_id)
    folder = root / "bundle1"
    command = ["--experiment", "served", "--mlflow-uri", uri, "--run-id", runs[0], "--thumbnails"]
    assert export_main([*command, "--alias", "champion", "--out", str(folder)]) == 0
    return {"root": root, "uri": uri, "runs": runs, "bundle1": folder}


def test_served_answers_are_the_shell_answers(registry, tmp_path, capsys):
    folder = registry["bundle1"]
    images = digit_pngs(folder, tmp_path, 3)
    assert (
        retrieve_main(["--bundle", str(folder), *sum((["--image", i] for i in images), []), "-k", "4", "--json"]) == 0
    )
    shell = json.loads(capsys.readouterr().out)
    served = ServedBundle.load(folder, label=str(folder))
    codes = served.encode([Path(image) for image in images])
    assert served.answer(images, codes, k=4, radius=None) == shell
    with_pictures = served.answer(images[:1], codes[:1], k=2, radius=None, thumbnails=True)
    assert all(n["thumbnail"].startswith("data:image/png;base64,") for n in with_pictures["results"][0]["neighbours"])
    info = served.info()
    assert (info["bits"], info["index"], info["database_size"], info["thumbnails"]) == (24, "flat", 1297, True)
    assert info["mlflow_run_id"] == registry["runs"][0]


def test_the_cli_refuses_bad_settings_before_starting_anything(registry, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("short\n")
    bundle = str(registry["bundle1"])
    for argv, message in (
        (["--bundle", bundle, "--host", "0.0.0.0"], "--host 0.0.0.0 exposes the service beyond this machine"),
        (["--bundle", bundle, "--token-file", str(token)], "must hold one token of 16+ characters"),
        (["--bundle", bundle, "--autoscale", "3,1"], "--autoscale '3,1' needs 0 <= MIN <= MAX"),
        (["--bundle", bundle, "--autoscale", "x"], "--autoscale 'x' is not MIN,MAX"),
        (["--bundle", bundle, "--max-pixels", "0"], "--max-pixels must be a positive integer, got 0"),
        (["--bundle", bundle, "--alias", "champion"], "--alias and --version go with --model"),
        (["--bundle", str(tmp_path / "none")], "does not exist: not a hashtune bundle"),
        (["--model", "hashtune", "--mlflow-uri", registry["uri"]], "needs --alias NAME or --version N"),
        (
            ["--model", "hashtune", "--alias", "nobody", "--mlflow-uri", registry["uri"]],
            "registered model 'hashtune' has no alias 'nobody'",
        ),
    ):
        assert serve_main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, lines)


@pytest.fixture(scope="module")
def service(registry):
    """`python -m hashtune.serve --model hashtune --alias champion` with a token, on 127.0.0.1; stopped by SIGTERM."""
    from ray_helpers import end_session_processes, short_temp_dir

    root, port = registry["root"], free_port()
    token = "t0ken-" + "x" * 20
    (root / "token").write_text(token + "\n")
    temp = short_temp_dir()
    command = [sys.executable, "-m", "hashtune.serve", "--model", "hashtune", "--alias", "champion"]
    command += ["--mlflow-uri", registry["uri"], "--port", str(port), "--token-file", str(root / "token")]
    command += ["--poll-s", "0.5", "--max-images", "4", "--max-bytes", "200000", "--max-pixels", "1000000"]
    started = time.monotonic()
    process = subprocess.Popen(
        command, env=os.environ | {"RAY_TMPDIR": temp}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()
        assert "hashtune.serve: serving hashtune v1, following alias 'champion'" in line, line
        yield {
            "url": f"http://127.0.0.1:{port}",
            "auth": {"Authorization": f"Bearer {token}"},
            "token": token,
            "process": process,
            "start_s": time.monotonic() - started,
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        end_session_processes(temp)


def _search(service, files=None, auth=True, **options):
    import requests

    return requests.post(
        f"{service['url']}/search",
        files=files,
        headers=service["auth"] if auth else {},
        timeout=60,
        **options,
    )


@pytest.mark.slow
@pytest.mark.xdist_group("ray-serve")
def test_bad_requests_interleaved_with_good_ones(service, registry, tmp_path):
    import requests

    folder = registry["bundle1"]
    retriever = Retriever.load(folder)
    images = digit_pngs(folder, tmp_path, 4)
    pngs = [Path(image).read_bytes() for image in images]
    bomb = png_header_only(tmp_path / "bomb.png", 30_000, 30_000).read_bytes()
    base = service["url"]
    assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok", "bundle": "hashtune v1"}
    assert requests.get(f"{base}/info", timeout=10).status_code == 401
    assert requests.get(f"{base}/info", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    info = requests.get(f"{base}/info", headers=service["auth"], timeout=10).json()
    assert (info["bits"], info["database_size"], info["mlflow_run_id"]) == (24, 1297, registry["runs"][0])
    page = requests.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "<title>hashtune retrieval</title>" in page.text
    bad = [
        (dict(files={"image": ("x.txt", b"not an image")}), 400, "is not an image"),
        (dict(files={"image": ("cut.png", pngs[0][:60])}), 400, "cannot be decoded (truncated"),
        (dict(files={"image": ("bomb.png", bomb)}), 413, "refused before decoding"),
        (dict(files={"image": ("big.png", b"0" * 250_000)}), 413, "over the limit of 200,000"),
        (dict(files=[("image", ("a.png", pngs[0]))] * 5), 413, "holds 5 images, over the limit of 4"),
        (dict(data=iter([b"{}"]), headers={"content-type": "application/json"}), 411, "has no Content-Length"),
        (dict(files={"image": ("a.png", pngs[0])}, params={"k": 0}), 422, "k must be in [1, 1297]"),
        (dict(files={"image": ("a.png", pngs[0])}, params={"k": 5000}), 422, "k must be in [1, 1297]"),
        (dict(files={"image": ("a.png", pngs[0])}, params={"radius": 25}), 422, "radius must be in [0, 24]"),
        (dict(data=b"hello", headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
        (dict(json={"images": []}), 400, "holds no image"),
        (dict(data=b"", headers={"content-type": "application/json"}), 400, "body is empty"),
        (dict(files={"image": ("a.png", pngs[0])}, auth=False), 401, "missing or wrong token"),
    ]
    for position, (request, status, message) in enumerate(bad):
        auth = request.pop("auth", True)
        if "headers" in request:
            request["headers"] |= service["auth"] if auth else {}
            answer = requests.post(f"{base}/search", timeout=60, **request)
        else:
            answer = _search(service, auth=auth, **request)
        assert answer.status_code == status and message in answer.json()["error"], (position, answer.text)
        query = position % len(images)
        good = _search(service, files={"image": (f"q{query}.png", pngs[query])}, params={"k": 5})
        expected = retriever.search([images[query]], k=5)
        neighbours = good.json()["results"][0]["neighbours"]
        assert good.status_code == 200 and good.headers["x-hashtune-bundle"] == "hashtune v1"
        assert [n["id"] for n in neighbours] == expected.ids[0].tolist()
        assert [n["distance"] for n in neighbours] == expected.distances[0].tolist()
    several = _search(service, json={"images": [base64.b64encode(p).decode() for p in pngs], "radius": 3}).json()
    for image, result in zip(images, several["results"]):
        assert [n["id"] for n in result["neighbours"]] == retriever.search_radius([image], 3)[0].ids[0].tolist()
    encoded = requests.post(f"{base}/encode", files={"image": pngs[1]}, headers=service["auth"], timeout=60).json()
    assert encoded["codes"] == [retriever.encode([images[1]])[0].tobytes().hex()]


@pytest.mark.slow
@pytest.mark.xdist_group("ray-serve")
def test_the_page_shows_a_querys_neighbours_in_chromium(service, registry, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from benchmarks.browser import headless_chromium

    image = digit_pngs(registry["bundle1"], tmp_path, 1)[0]
    with headless_chromium() as driver:
        driver.get(f"{service['url']}/#token={service['token']}")
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys("6")
        driver.find_element(By.ID, "file").send_keys(image)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "figure.neighbour"))
        captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "figure.neighbour figcaption")]
        pictures = driver.find_elements(By.CSS_SELECTOR, "figure.neighbour img")
        assert len(captions) == 6 and all(c.startswith("d=") and "label" in c for c in captions), captions
        assert len(pictures) == 6 and all(p.get_attribute("naturalWidth") == "8" for p in pictures)
        assert "24-bit codes, flat index over 1297 images" in driver.find_element(By.ID, "about").text


@pytest.mark.slow
@pytest.mark.xdist_group("ray-serve")
def test_moving_the_alias_swaps_the_model_without_a_failed_request(service, registry, tmp_path):
    images = digit_pngs(registry["bundle1"], tmp_path, 2)
    pngs = [Path(image).read_bytes() for image in images]
    answered: list[list[tuple[int, str]]] = [[] for _ in range(3)]
    stop = threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            answer = _search(service, files={"image": ("q.png", pngs[number % 2])}, params={"k": 3})
            answered[number].append((answer.status_code, answer.headers.get("x-hashtune-bundle")))
            stop.wait(0.02)  # steady traffic that leaves the 2 cores to the export and the replica's reload

    threads = [threading.Thread(target=client, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        uri, second = registry["uri"], registry["runs"][1]
        argv = ["--experiment", "served", "--mlflow-uri", uri, "--run-id", second, "--alias", "champion"]
        assert export_main([*argv, "--out", str(tmp_path / "bundle2")]) == 0
        deadline = time.monotonic() + 120
        while not all(a and a[-1][1] == "hashtune v2" for a in answered) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    for sequence in answered:
        assert {status for status, _ in sequence} == {200}
        labels = [label for _, label in sequence]
        swap = labels.index("hashtune v2")
        assert swap > 0 and set(labels[:swap]) == {"hashtune v1"} and set(labels[swap:]) == {"hashtune v2"}
    process = service["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
