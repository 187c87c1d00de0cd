"""ONNX export (metadata, parity, thresholds) and streaming tagging (formats, shards, resume).

One real tiny project (40 synthetic 32 px scenes, 10 labels, one resnet18 fine-tuning epoch)
is built once for the module; every test exports or tags from it.
"""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from alft_cli import api, export, onnxrun, tag
from alft_cli.errors import AlftError, CheckpointError, OptionError
from alft_cli.images import CONVERSIONS, RESIZE_METHOD
from alft_cli.progress import Reporter, set_reporter
from alft_cli.project import open_project
from alft_cli.synthetic import generate_archive
from alft_cli.tagout import FORMATS


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A project with a trained round 0, its default export, and its archive."""
    base = tmp_path_factory.mktemp("export_tag")
    archive = generate_archive(base / "arch", n_images=40, image_size=32, seed=5,
                               formats=("png", "jpg", "tif"))
    proj = base / "proj"
    api.init_pool(archive.root, proj, labels_file=archive.labels_csv, initial=10,
                  image_size=32)
    gold = dict(zip(archive.keys, archive.Y))
    labels = base / "initial_labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *archive.classes])
        for key in api.status(proj)["pending"]:
            writer.writerow([key, *(int(v) for v in gold[key])])
    api.import_labels(proj, labels)
    api.finetune(proj, epochs=1, batch_size=8, init="scratch", backbone="resnet18",
                 device="cpu")
    project = open_project(proj)
    rep = Reporter()
    previous = set_reporter(rep)
    try:
        exported = export.export_project(project)
    finally:
        set_reporter(previous)
    yield {"base": base, "archive": archive, "proj": proj, "project": project,
           "export": exported, "messages": rep.messages}
    project.close()


@pytest.fixture(scope="module")
def calibrated(built):
    return export.export_project(built["project"], calibrate_thresholds=True,
                                 out=built["base"] / "calibrated.onnx")


@pytest.fixture()
def archive_dir(built, tmp_path):
    """A private copy of the images that a test may damage."""
    dst = tmp_path / "images"
    shutil.copytree(built["archive"].root, dst)
    return dst


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _cpu(model: Path, archive: Path, out: Path, **kw):
    return tag.tag_archive(model, archive, out, **{"device": "cpu", "batch_size": 8, **kw})


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def test_export_writes_one_self_contained_valid_file(built):
    result = built["export"]
    project = built["project"]
    assert result.path == project.exports_dir / "alft_round000.onnx"
    assert sorted(p.name for p in project.exports_dir.iterdir()) == ["alft_round000.onnx"]
    model = onnx.load(str(result.path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t)
                   for t in model.graph.initializer)
    onnx.checker.check_model(str(result.path), full_check=True)
    (graph_in,) = model.graph.input
    (graph_out,) = model.graph.output
    assert graph_in.name == "image" and graph_out.name == "probabilities"
    assert graph_in.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_in.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]


def test_export_metadata(built):
    meta = _meta(built["export"].path)
    project = built["project"]
    assert meta == built["export"].metadata
    assert json.loads(meta["classes"]) == project.classes
    assert json.loads(meta["thresholds"]) == [0.5] * len(project.classes)
    assert meta["input_name"] == "image"
    assert meta["input_size"] == "32" and meta["in_channels"] == "3"
    assert meta["channel_order"] == "RGB"
    assert meta["input_range"] == "0-255 float32; normalization is applied inside the model"
    assert json.loads(meta["normalization_mean"]) == pytest.approx(project.config.mean)
    assert json.loads(meta["normalization_std"]) == pytest.approx(project.config.std)
    assert "inside" in meta["normalization"]
    assert meta["resize"] == RESIZE_METHOD and meta["conversions"] == CONVERSIONS
    assert meta["backbone"] == "resnet18"
    assert meta["round"] == "0" and meta["labels_used"] == "10"
    record = project.store.round(0)
    for split in ("val", "test"):
        for name in ("micro_f1", "macro_f1"):
            assert float(meta[f"{split}_{name}"]) == pytest.approx(record.metrics[split][name],
                                                                   abs=1e-6)
    from alft_cli import __version__

    assert meta["alft_version"] == __version__
    assert meta["exported_at"].endswith("Z") and meta["usage"]


def test_export_parity_and_dynamic_batch(built):
    from alft_cli.data import CachedImages
    from alft_cli.finetune import load_model

    result = built["export"]
    assert result.parity_images == 32
    assert 0 <= result.parity_max_abs_diff <= 1e-4
    assert any("parity" in m for _, m in built["messages"])
    project = built["project"]
    model, _ = load_model(project.resolve(project.store.round(0).model_file))
    model.eval()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    images = CachedImages(project.cache_path).read(np.arange(6)).astype(np.float32)
    for batch in (images[:1], images[1:6]):
        got = session.run(["probabilities"], {"image": batch})[0]
        with torch.no_grad():
            want = torch.sigmoid(model(torch.from_numpy(batch))).numpy()
        assert got.shape == (len(batch), len(project.classes))
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert 0.01 < got.std()  # not saturated: the comparison means something


def test_export_refuses_a_graph_that_disagrees_and_leaves_no_file(built, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setattr(export, "_parity", lambda *a: 0.5)
    out = tmp_path / "bad.onnx"
    with pytest.raises(AlftError, match="disagree"):
        export.export_project(built["project"], out=out)
    assert list(tmp_path.iterdir()) == []


def test_export_option_errors(built, monkeypatch):
    project = built["project"]
    with pytest.raises(OptionError, match="--round 7 has no trained model"):
        export.export_project(project, round_=7)
    monkeypatch.setattr(project.store, "gold", lambda split: (np.zeros(0, np.int64),
                                                              np.zeros((0, 10), np.uint8)))
    with pytest.raises(OptionError, match="validation"):
        export.export_project(project, calibrate_thresholds=True)
    monkeypatch.setattr(project.store, "rounds", lambda: [])
    with pytest.raises(OptionError, match="run alft finetune first"):
        export.export_project(project)


def test_calibrated_thresholds(built, calibrated, tmp_path):
    thresholds = np.array(calibrated.thresholds)
    assert thresholds.shape == (len(built["project"].classes),)
    assert np.all((0 <= thresholds) & (thresholds <= 1))
    assert np.any(np.abs(thresholds - 0.5) > 1e-9)
    assert json.loads(_meta(calibrated.path)["thresholds"]) == pytest.approx(thresholds,
                                                                              abs=1e-6)
    assert "best F1" in calibrated.metadata["thresholds_source"]
    # Tagging applies the stored thresholds, not 0.5.
    out = tmp_path / "tags.jsonl"
    _cpu(calibrated.path, built["archive"].root, out, fmt="jsonl")
    classes = built["project"].classes
    for line in out.read_text().splitlines():
        record = json.loads(line)
        p = np.array([record["probabilities"][c] for c in classes])
        clear = np.abs(p - thresholds) > 2e-6  # 6-decimal rounding may sit on a threshold
        expect = {c for c, hit, ok in zip(classes, p >= thresholds, clear) if hit and ok}
        assert expect <= set(record["labels"])
        assert set(record["labels"]) <= {c for c, hit in zip(classes, p >= thresholds - 2e-6)
                                         if hit}


# --------------------------------------------------------------------------------------------
# plain onnxruntime, from the export module's own docstring
# --------------------------------------------------------------------------------------------
def _docstring_example() -> str:
    lines = export.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Example (plain")) + 1
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


@pytest.mark.parametrize("side", [48, 64, 100, 128])
def test_plain_onnxruntime_example_reproduces_alft_tag(built, tmp_path, side):
    """Issue 15: a plain Pillow + numpy + onnxruntime script that follows the metadata tags
    JPEG, PNG and TIFF exactly as alft tag does, also when they shrink by 2x and more (where
    reduced-scale JPEG decoding used to give other pixels, up to 0.095 in probability)."""
    code = _docstring_example()
    assert "alft" not in code.replace("as alft does", "")  # the snippet needs only the .onnx
    other = generate_archive(tmp_path / "arch", n_images=6, image_size=side, seed=9,
                             formats=("png", "jpg", "tif"))
    out = tmp_path / "tags.jsonl"
    _cpu(built["export"].path, other.root, out, fmt="jsonl")
    records = {r["filename"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == sorted(other.keys)
    classes = built["project"].classes
    for key in other.keys:
        namespace = {"MODEL_PATH": str(built["export"].path),
                     "IMAGE_PATH": str(other.root / key)}
        exec(compile(code, "export-docstring", "exec"), namespace)  # noqa: S102
        mine = np.array([records[key]["probabilities"][c] for c in classes])
        np.testing.assert_allclose(namespace["probabilities"], mine, atol=1e-4, rtol=0)
        assert namespace["labels"] == records[key]["labels"]


@pytest.mark.parametrize("fmt", ["jpg", "png", "tif"])
@pytest.mark.parametrize("side", [64, 100, 128, 256])
def test_decoded_pixels_are_the_documented_resize(tmp_path, fmt, side):
    """What alft feeds its models is exactly Pillow's full decode + BILINEAR resize, the
    metadata's 'resize'; a JPEG is never decoded at a reduced scale."""
    from PIL import Image

    from alft_cli.images import load_image

    arch = generate_archive(tmp_path / "a", n_images=2, image_size=side, seed=4, formats=(fmt,))
    for key in arch.keys:
        with Image.open(arch.root / key) as img:
            want = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(load_image(arch.root / key, 32).array, want)
    assert "no JPEG draft" in RESIZE_METHOD


# --------------------------------------------------------------------------------------------
# tagging
# --------------------------------------------------------------------------------------------
def test_tag_csv(built, tmp_path):
    out = tmp_path / "tags.csv"
    rep = Reporter()
    previous = set_reporter(rep)
    try:
        result = _cpu(built["export"].path, built["archive"].root, out)
    finally:
        set_reporter(previous)
    classes = built["project"].classes
    assert (result.tagged, result.skipped, result.already_done) == (40, 0, 0)
    assert result.provider == "CPUExecutionProvider" and result.skipped_file is None
    assert result.images_per_second > 0
    assert sum("CPUExecutionProvider" in m for _, m in rep.messages) == 1
    header, rows = _read_csv(out)
    assert header == ["filename", *classes, "labels"]
    assert sorted(r[0] for r in rows) == sorted(built["archive"].keys)
    for row in rows:
        p = np.array([float(v) for v in row[1:-1]])
        assert all(len(v.split(".")[1]) == 6 for v in row[1:-1])
        assert row[-1] == ";".join(c for c, v in zip(classes, p) if v >= 0.5)
    # Same probabilities as the exported graph run directly.
    session = ort.InferenceSession(str(built["export"].path),
                                   providers=["CPUExecutionProvider"])
    from alft_cli.images import load_image

    key = rows[3][0]
    x = load_image(built["archive"].root / key, 32).array.transpose(2, 0, 1)[None]
    direct = session.run(None, {"image": x.astype(np.float32)})[0][0]
    np.testing.assert_allclose([float(v) for v in rows[3][1:-1]], direct, atol=1e-6)


def test_tag_jsonl_matches_csv(built, tmp_path):
    _cpu(built["export"].path, built["archive"].root, tmp_path / "t.csv")
    _cpu(built["export"].path, built["archive"].root, tmp_path / "t.jsonl", fmt="jsonl",
         batch_size=5)
    classes = built["project"].classes
    _, rows = _read_csv(tmp_path / "t.csv")
    by_csv = {r[0]: ([float(v) for v in r[1:-1]], r[-1]) for r in rows}
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 40
    for line in lines:
        record = json.loads(line)
        assert set(record) == {"filename", "probabilities", "labels"}
        assert list(record["probabilities"]) == classes
        probs, labels = by_csv[record["filename"]]
        np.testing.assert_allclose([record["probabilities"][c] for c in classes], probs,
                                   atol=1e-6)
        assert ";".join(record["labels"]) == labels


def test_tag_manifest(built, tmp_path):
    keys = built["archive"].keys[:7]
    manifest = built["archive"].root / "subset.csv"
    manifest.write_text("filename,other\n" + "".join(f"{k},x\n" for k in keys)
                        + "missing/nothere.png,x\n" + f"{keys[0]},dup\n")
    try:
        result = _cpu(built["export"].path, manifest, tmp_path / "m.csv")
    finally:
        manifest.unlink()
    assert result.tagged == 7 and result.skipped == 1
    _, rows = _read_csv(tmp_path / "m.csv")
    assert sorted(r[0] for r in rows) == sorted(keys)
    _, skipped = _read_csv(result.skipped_file)
    assert skipped == [["missing/nothere.png", "listed in the manifest but not found"]]


def test_shards_partition_the_archive_deterministically(built, tmp_path):
    model, root = built["export"].path, built["archive"].root
    parts = []
    for i in range(3):
        result = _cpu(model, root, tmp_path / f"s{i}.csv", shard=f"{i}/3")
        _, rows = _read_csv(tmp_path / f"s{i}.csv")
        names = {r[0] for r in rows}
        assert result.tagged == len(names) == len(rows)
        assert names == {k for k in built["archive"].keys if zlib.crc32(k.encode()) % 3 == i}
        parts.append(names)
    assert set().union(*parts) == set(built["archive"].keys)
    assert sum(map(len, parts)) == 40 and all(parts)
    again = _cpu(model, root, tmp_path / "again.csv", shard="1/3", batch_size=3)
    _, rows = _read_csv(tmp_path / "again.csv")
    assert {r[0] for r in rows} == parts[1] and again.tagged == len(parts[1])


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_skips_done_files_and_repairs_a_truncated_line(built, tmp_path, fmt):
    model, root = built["export"].path, built["archive"].root
    full = tmp_path / f"full.{fmt}"
    _cpu(model, root, full, fmt=fmt)
    lines = full.read_text().splitlines(keepends=True)
    n_header = 1 if fmt == "csv" else 0
    # A run killed while writing row 11: 10 complete rows and half of the next one.
    out = tmp_path / f"killed.{fmt}"
    out.write_text("".join(lines[:n_header + 10]) + lines[n_header + 10][:17])
    result = _cpu(model, root, out, fmt=fmt, resume=True)
    assert (result.already_done, result.tagged) == (10, 30)
    assert sorted(out.read_text().splitlines()[n_header:]) == sorted(
        line.rstrip("\n") for line in lines[n_header:])
    # Resuming a complete output does nothing.
    again = _cpu(model, root, out, fmt=fmt, resume=True)
    assert (again.already_done, again.tagged) == (40, 0)
    assert len(out.read_text().splitlines()) == 40 + n_header


def test_resume_refuses_an_output_of_another_model(built, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("filename,a,b,labels\nx.png,0.1,0.2,\n")
    with pytest.raises(OptionError, match="columns"):
        _cpu(built["export"].path, built["archive"].root, out, resume=True)


def test_resume_with_another_model_is_refused_and_overwrite_starts_over(built, calibrated,
                                                                         tmp_path):
    # Same classes, other thresholds: the columns match, only the model's identity tells.
    root = built["archive"].root
    out = tmp_path / "tags.csv"
    first = _cpu(built["export"].path, root, out, shard="0/2")
    record = json.loads(tag.model_record_path(out).read_text())
    assert record["sha256"] == tag.file_sha256(built["export"].path) == first.model_sha256
    assert (record["format"], record["shard"]) == ("csv", "0/2")
    before = out.read_text()
    with pytest.raises(OptionError, match=r"written by another model \(alft_round000.onnx.*"
                                          r"--overwrite"):
        _cpu(calibrated.path, root, out, shard="0/2", resume=True)
    with pytest.raises(OptionError, match="shard 0/2, this run is shard 1/2"):
        _cpu(built["export"].path, root, out, shard="1/2", resume=True)
    with pytest.raises(OptionError, match="give one of them"):
        _cpu(calibrated.path, root, out, shard="0/2", resume=True, overwrite=True)
    assert out.read_text() == before
    # The same model resumes; --overwrite tags again with the new one.
    assert _cpu(built["export"].path, root, out, shard="0/2", resume=True).tagged == 0
    again = _cpu(calibrated.path, root, out, shard="0/2", overwrite=True)
    assert again.tagged == first.tagged and again.already_done == 0
    assert json.loads(tag.model_record_path(out).read_text())["sha256"] == tag.file_sha256(
        calibrated.path)
    _, rows = _read_csv(out)
    assert len(rows) == first.tagged


def test_resuming_an_output_without_a_model_record_warns(built, tmp_path):
    # Outputs written before the record existed resume with a warning, and get one.
    out = tmp_path / "tags.csv"
    _cpu(built["export"].path, built["archive"].root, out)
    tag.model_record_path(out).unlink()
    rep = Reporter()
    previous = set_reporter(rep)
    try:
        result = _cpu(built["export"].path, built["archive"].root, out, resume=True)
    finally:
        set_reporter(previous)
    assert result.already_done == 40
    assert any("no record of the model" in text for _, text in rep.messages)
    assert tag.model_record_path(out).exists()


@pytest.mark.parametrize("name, fmt, expected", [
    ("tags.jsonl", None, "jsonl"), ("tags.ndjson", None, "jsonl"), ("tags.CSV", None, "csv"),
    ("tags.txt", None, "csv"), ("tags", None, "csv"), ("tags.txt", "jsonl", "jsonl"),
    ("tags.jsonl", "jsonl", "jsonl"), ("tags.jsonl", "csv", "like jsonl"),
    ("tags.csv", "jsonl", "like csv"), ("tags.json", None, "not one JSON document"),
    ("tags.csv", "xml", "use csv or jsonl"),
])
def test_output_format_follows_the_name_or_is_refused(name, fmt, expected):
    if expected in FORMATS:
        assert tag.resolve_format(fmt, Path(name)) == expected
    else:
        with pytest.raises(OptionError, match=expected):
            tag.resolve_format(fmt, Path(name))


def test_tag_overwrite_from_the_command_line(built, calibrated, tmp_path, cli):
    out = tmp_path / "tags.csv"
    args = [built["archive"].root, "--out", out, "--device", "cpu", "--batch-size", "8"]
    assert cli("tag", built["export"].path, *args).code == 0
    r = cli("tag", calibrated.path, *args, "--resume")
    assert r.code == 1 and "written by another model" in r.stderr, r.stderr
    r = cli("tag", calibrated.path, *args, "--overwrite")
    assert r.code == 0, r.stderr
    assert json.loads(tag.model_record_path(out).read_text())["sha256"] == tag.file_sha256(
        calibrated.path)


def test_tag_to_a_jsonl_name_writes_jsonl(built, tmp_path, cli):
    out = tmp_path / "tags.jsonl"
    result = cli("tag", built["export"].path, built["archive"].root, "--out", out,
                 "--device", "cpu", "--batch-size", "8")
    assert result.code == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 40 and set(json.loads(lines[0])) == {"filename", "probabilities",
                                                               "labels"}


def test_unreadable_files_go_to_the_side_file(built, archive_dir, tmp_path):
    (archive_dir / "bad").mkdir()
    (archive_dir / "bad" / "empty.png").write_bytes(b"")
    (archive_dir / "bad" / "text.png").write_text("this is not an image\n")
    out = tmp_path / "tags.csv"
    result = _cpu(built["export"].path, archive_dir, out)
    assert (result.tagged, result.skipped) == (40, 2)
    assert result.skipped_file == tmp_path / "tags.csv.skipped.csv"
    header, rows = _read_csv(result.skipped_file)
    assert header == ["filename", "reason"]
    reasons = dict(rows)
    assert set(reasons) == {"bad/empty.png", "bad/text.png"}
    assert "empty" in reasons["bad/empty.png"] and "not a readable image" in reasons[
        "bad/text.png"]
    _, tagged = _read_csv(out)
    assert len(tagged) == 40 and not any(r[0].startswith("bad/") for r in tagged)


def test_existing_output_without_resume_is_refused(built, tmp_path):
    out = tmp_path / "tags.csv"
    out.write_text("keep me\n")
    with pytest.raises(OptionError, match="exists; use --resume .* --overwrite"):
        _cpu(built["export"].path, built["archive"].root, out)
    assert out.read_text() == "keep me\n"


@pytest.mark.parametrize("bad", ["3/3", "a/b", "1", "-1/2", "1/0", "0/0", "1/2/3", "1 of 2"])
def test_bad_shard_is_refused(built, tmp_path, bad):
    with pytest.raises(OptionError, match="--shard"):
        _cpu(built["export"].path, built["archive"].root, tmp_path / "t.csv", shard=bad)


def test_parse_shard():
    assert tag.parse_shard(None) is None
    assert tag.parse_shard(" 2/5 ") == (2, 5)
    assert tag.parse_shard("0/1") == (0, 1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_non_alft_models_are_refused(built, tmp_path):
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(plain), dynamo=False)
    with pytest.raises(CheckpointError, match="not an alft model"):
        _cpu(plain, built["archive"].root, tmp_path / "t.csv")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        _cpu(garbage, built["archive"].root, tmp_path / "t.csv")
    with pytest.raises(CheckpointError, match="does not exist"):
        _cpu(tmp_path / "nothere.onnx", built["archive"].root, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_other_option_errors(built, tmp_path):
    model, root = built["export"].path, built["archive"].root
    with pytest.raises(OptionError, match="--format"):
        _cpu(model, root, tmp_path / "t.csv", fmt="xml")
    with pytest.raises(OptionError, match="--device"):
        tag.tag_archive(model, root, tmp_path / "t.csv", device="tpu")
    from alft_cli.errors import ArchiveError

    with pytest.raises(ArchiveError, match="does not exist"):
        _cpu(model, tmp_path / "nothere", tmp_path / "t.csv")


@pytest.mark.skipif(onnxrun.cuda_device_count() > 0, reason="a CUDA GPU is present")
def test_device_cuda_without_gpu_is_an_option_error(built, tmp_path):
    with pytest.raises(OptionError, match="--device cuda"):
        tag.tag_archive(built["export"].path, built["archive"].root, tmp_path / "t.csv",
                        device="cuda")
    # auto falls back to the CPU and says so on its one line.
    rep = Reporter()
    previous = set_reporter(rep)
    try:
        result = tag.tag_archive(built["export"].path, built["archive"].root,
                                 tmp_path / "t.csv", device="auto")
    finally:
        set_reporter(previous)
    assert result.provider == "CPUExecutionProvider"
    assert [m for _, m in rep.messages if "onnxruntime" in m][0].count("GPU not used") == 1


@pytest.mark.skipif(onnxrun.cuda_device_count() > 0, reason="a CUDA GPU is present")
def test_a_cuda_provider_that_fails_to_load_falls_back_in_one_line(built, tmp_path,
                                                                    monkeypatch, capfd):
    # Pretend the driver reports a GPU: onnxruntime then really tries its CUDA provider,
    # which cannot load here, and its C++ error log must not reach the user.
    monkeypatch.setattr(onnxrun, "cuda_device_count", lambda: 1)
    rep = Reporter()
    previous = set_reporter(rep)
    try:
        result = tag.tag_archive(built["export"].path, built["archive"].root,
                                 tmp_path / "t.csv", device="auto")
    finally:
        set_reporter(previous)
    assert result.provider == "CPUExecutionProvider" and result.tagged == 40
    (line,) = [m for _, m in rep.messages if "onnxruntime" in m]
    assert "could not start its CUDA provider" in line
    with pytest.raises(OptionError, match="--device cuda: onnxruntime could not start"):
        tag.tag_archive(built["export"].path, built["archive"].root, tmp_path / "u.csv",
                        device="cuda")
    captured = capfd.readouterr()
    assert "Failed to load library" not in captured.err + captured.out


def test_tag_ignores_sidecar_files_but_reports_broken_images(built, tmp_path):
    import shutil

    root = tmp_path / "arch"
    shutil.copytree(built["archive"].root, root)
    (root / "scene.aux.xml").write_text("<PAMDataset/>")
    (root / "broken.png").write_bytes(b"not a png")
    result = _cpu(built["export"].path, root, tmp_path / "t.csv")
    _, skipped = _read_csv(result.skipped_file)
    assert [row[0] for row in skipped] == ["broken.png"]
