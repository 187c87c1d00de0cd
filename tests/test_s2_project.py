"""Multi-band projects end to end (issue 14): init-pool options and config, the float16 cache,
quicklooks, export metadata, tag in both layouts, and a plain rasterio + numpy + onnxruntime
script that tags exactly as alft does."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from alft_cli import api
from alft_cli.config import ProjectConfig
from alft_cli.errors import AlftError, ArchiveError, OptionError
from alft_cli.synthetic_s2 import BANDS, generate_s2_archive

SIZE = 24

# The plain script: rasterio, numpy, onnxruntime and the .onnx file, nothing of alft. It
# follows the metadata ('raster', 'read', 'nodata', 'scaling') for either layout.
PLAIN_SCRIPT = r'''
import json
import os
import re

import numpy as np
import onnxruntime as ort
import rasterio
from rasterio.enums import Resampling

sess = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
raster = json.loads(meta["raster"])
size = int(meta["input_size"])
lo = np.asarray(raster["scale_lo"], np.float32)[:, None, None]
hi = np.asarray(raster["scale_hi"], np.float32)[:, None, None]
resampling = Resampling[raster["resampling"]]


def masked(x, nodata):
    bad = ~np.isfinite(x)
    if nodata is not None:
        bad |= x == np.float32(nodata)
    return bad


if raster["layout"] == "file":
    with rasterio.open(SAMPLE_PATH) as src:
        x = src.read(raster["band_indexes"], out_shape=(len(raster["bands"]), size, size),
                     resampling=resampling, out_dtype="float32")
        bad = masked(x, raster["nodata"] if raster["nodata"] is not None else src.nodata)
else:
    files = {}
    for name in os.listdir(SAMPLE_PATH):
        m = re.match(r"^.+_(B(?:0[1-9]|1[0-2]|8A))\.(?:tif|tiff|jp2)$", name, re.I)
        if m:
            files[m.group(1).upper()] = os.path.join(SAMPLE_PATH, name)
    x = np.empty((len(raster["bands"]), size, size), np.float32)
    bad = np.empty(x.shape, bool)
    for i, band in enumerate(raster["bands"]):
        with rasterio.open(files[band]) as src:
            x[i] = src.read(1, out_shape=(size, size), resampling=resampling,
                            out_dtype="float32")
            bad[i] = masked(x[i], raster["nodata"] if raster["nodata"] is not None
                            else src.nodata)
x = np.clip((x - lo) / (hi - lo), 0, 1) * np.float32(255)
x[bad] = 0
probabilities = sess.run([meta["output_name"]], {meta["input_name"]: x[None]})[0][0]
'''


@pytest.fixture(scope="module", params=["band-folder", "file"])
def built(request, tmp_path_factory):
    """A multi-band project per layout with a trained round 0 and its export."""
    layout = request.param
    base = tmp_path_factory.mktemp(f"s2-{layout}")
    arch = generate_s2_archive(base / "arch", n_images=40, image_size=SIZE, seed=2,
                               layout=layout)
    proj = base / "proj"
    api.init_pool(arch.root, proj, labels_file=arch.labels_csv, initial=12, image_size=SIZE,
                  scale="reflectance" if layout == "file" else None)
    gold = dict(zip(arch.keys, arch.Y))
    labels = base / "initial.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *arch.classes])
        for key in api.status(proj)["pending"]:
            writer.writerow([key, *(int(v) for v in gold[key])])
    api.import_labels(proj, labels)
    api.finetune(proj, epochs=1, batch_size=6, init="scratch", backbone="resnet18",
                 device="cpu")
    exported = api.export(proj)
    return {"layout": layout, "base": base, "arch": arch, "proj": proj, "export": exported}


def test_config_and_cache(built):
    cfg = ProjectConfig.load(built["proj"] / "config.json")
    raster = cfg.raster
    assert raster is not None and raster.layout == built["layout"]
    assert raster.bands == list(BANDS) and cfg.in_channels == 12 and raster.dtype == "uint16"
    assert raster.scale == ("reflectance" if built["layout"] == "file" else "percentile")
    assert cfg.schema_version == 2 and len(cfg.mean) == 12
    cache = np.load(built["proj"] / "cache" / "images.npy", mmap_mode="r")
    assert cache.dtype == np.float16 and cache.shape == (40, 12, SIZE, SIZE)
    # Class names with commas went through init-pool, labels and training.
    assert any("," in c for c in cfg.classes) and any("/" in c for c in cfg.classes)


def test_export_metadata_names_the_bands_and_scaling(built):
    meta = built["export"].metadata
    assert json.loads(meta["bands"]) == list(BANDS)
    assert meta["band_layout"].startswith(built["layout"])
    assert "bilinear" in meta["read"] and "out_dtype='float32'" in meta["read"]
    assert "masked" in meta["nodata"] and "clip((x - scale_lo)" in meta["scaling"]
    assert len(json.loads(meta["scale_lo"])) == 12
    assert meta["conversions"].startswith("none")


def test_plain_script_tags_exactly_as_alft_tag(built, tmp_path):
    assert "alft" not in PLAIN_SCRIPT
    out = tmp_path / "tags.jsonl"
    api.tag(built["export"].path, built["arch"].root, out=out, fmt="jsonl", device="cpu")
    records = {r["filename"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == sorted(built["arch"].keys)
    classes = list(built["arch"].classes)
    worst = 0.0
    for key in built["arch"].keys[:12]:
        namespace = {"MODEL_PATH": str(built["export"].path),
                     "SAMPLE_PATH": str(built["arch"].root / key)}
        exec(compile(PLAIN_SCRIPT, "plain-script", "exec"), namespace)  # noqa: S102
        mine = np.array([records[key]["probabilities"][c] for c in classes])
        worst = max(worst, float(np.max(np.abs(namespace["probabilities"] - mine))))
    print(f"max |p diff| plain script vs alft tag: {worst:.2e}")
    assert worst <= 1e-4


def test_tag_refuses_an_archive_with_other_bands(built, tmp_path):
    other = "file" if built["layout"] == "band-folder" else "band-folder"
    arch = generate_s2_archive(tmp_path / "other", n_images=2, image_size=SIZE, layout=other)
    with pytest.raises(ArchiveError, match=f"is in the {other} layout; this model reads"):
        api.tag(built["export"].path, arch.root, out=tmp_path / "t.csv", device="cpu")
    # The right layout without the model's bands.
    if built["layout"] == "band-folder":
        root = tmp_path / "fewer"
        shutil.copytree(built["arch"].root, root)
        for f in root.rglob("*_B08.tif"):
            f.unlink()
    else:
        import rasterio
        from affine import Affine

        root = tmp_path / "fewer"
        root.mkdir()
        with rasterio.open(root / "x.tif", "w", driver="GTiff", height=SIZE, width=SIZE,
                           count=4, dtype="uint16", crs="EPSG:32633",
                           transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
            dst.write(np.ones((4, SIZE, SIZE), np.uint16))
    with pytest.raises(ArchiveError, match="do not match the model's"):
        api.tag(built["export"].path, root, out=tmp_path / "t2.csv", device="cpu")


def test_query_writes_quicklooks(built, tmp_path):
    from PIL import Image

    result = api.query(built["proj"], budget=4, strategy="random", fmt="label-studio",
                       device="cpu", force=True)
    with result.query_file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    for row in rows:
        png = result.query_file.parent / row["quicklook"]
        with Image.open(png) as img:
            assert img.mode == "RGB" and img.size[0] >= 256
    tasks = json.loads(result.query_file.with_suffix(".label-studio.json").read_text())
    assert all(t["data"]["image"].endswith(".png") for t in tasks)
    assert {t["data"]["alft_key"] for t in tasks} == {r["filename"] for r in rows}
    # The query file reads back as a label file (the quicklook column is alft's own).
    api.import_labels(built["proj"], result.query_file, dry_run=True)


def test_preview_bands_option(built):
    result = api.query(built["proj"], budget=2, strategy="random", device="cpu", force=True,
                       preview_bands="B08,B04,B03")
    assert len(list((result.query_file.parent / "quicklooks").glob("*.png"))) >= 2
    with pytest.raises(OptionError, match="--preview-bands: band 'B99' not found"):
        api.query(built["proj"], budget=2, strategy="random", device="cpu", force=True,
                  preview_bands="B99,B04,B03")


# --------------------------------------------------------------------------------------------
# init-pool options and bad input (one line, nothing created)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("s2-small")
    return generate_s2_archive(base / "arch", n_images=6, image_size=SIZE, seed=3)


def test_bands_option_sets_in_channels(small, tmp_path):
    api.init_pool(small.root, tmp_path / "p", classes="a,b", initial=0, image_size=SIZE,
                  bands="B04,B03,B02,B08", scale="reflectance", nodata=0)
    cfg = ProjectConfig.load(tmp_path / "p" / "config.json")
    assert cfg.in_channels == 4 and cfg.raster.bands == ["B04", "B03", "B02", "B08"]
    assert cfg.raster.nodata == 0 and cfg.raster.scale_hi == [10000.0] * 4


@pytest.mark.parametrize("options, message", [
    ({"bands": "B04,B99"}, "--bands: band 'B99' not found"),
    ({"scale": "none"}, "--scale none keeps raw values and is for 8-bit data"),
    ({"layout": "tiles"}, "--layout 'tiles'"),
    ({"in_channels": 3}, "--in-channels 3 does not match the 12 bands"),
])
def test_bad_raster_options_create_nothing(small, tmp_path, options, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        api.init_pool(small.root, tmp_path / "p", classes="a,b", initial=0, image_size=SIZE,
                      **options)
    assert not (tmp_path / "p").exists()
    assert not list(tmp_path.glob(".alft-init-*"))


def test_cli_errors_are_one_line(small, tmp_path, cli):
    r = cli("init-pool", small.root, "-p", tmp_path / "p", "--classes", "a,b", "--bands",
            "B04,B99", "--image-size", SIZE)
    assert r.code == 1 and r.stderr.startswith("error: --bands: band 'B99' not found")
    assert "Traceback" not in r.stderr and not (tmp_path / "p").exists()


def test_bad_samples_are_skipped_with_their_reason(small, tmp_path):
    root = tmp_path / "arch"
    shutil.copytree(small.root, root)
    k = small.keys
    (root / k[0] / f"{k[0]}_B05.tif").unlink()                                  # missing
    shutil.copy(root / k[1] / f"{k[1]}_B02.tif", root / k[1] / f"{k[1]}_B02.tiff")  # twice
    (root / k[2] / f"{k[2]}_B03.tif").write_bytes(b"not a tiff at all")             # broken
    result = api.init_pool(root, tmp_path / "p", classes="a,b", initial=0, image_size=SIZE)
    assert result.indexed == 3
    with result.skipped_file.open(newline="", encoding="utf-8") as handle:
        reasons = {row["filename"]: row["reason"] for row in csv.DictReader(handle)}
    assert reasons[k[0]] == "missing band B05"
    assert reasons[k[1] + "/"].startswith("duplicate band B02")
    assert "not a readable raster" in reasons[k[2]]


def test_mixed_layouts_refused(small, tmp_path):
    root = tmp_path / "arch"
    shutil.copytree(small.root, root)
    flat = generate_s2_archive(tmp_path / "flat", n_images=1, image_size=SIZE, layout="file")
    shutil.copy(flat.root / flat.keys[0], root / "loose.tif")
    with pytest.raises(ArchiveError, match="mixes band folders"):
        api.init_pool(root, tmp_path / "p", classes="a,b", initial=0, image_size=SIZE)
    assert not (tmp_path / "p").exists()


def test_rgb_projects_are_unchanged(tiny_archive, tmp_path):
    api.init_pool(tiny_archive.root, tmp_path / "p", classes="a,b", initial=0, image_size=32)
    raw = json.loads((tmp_path / "p" / "config.json").read_text())
    assert "raster" not in raw and raw["schema_version"] == 1 and raw["in_channels"] == 3
    assert np.load(tmp_path / "p" / "cache" / "images.npy", mmap_mode="r").dtype == np.uint8


def test_labels_from_bigearthnet(small, tmp_path, cli):
    out = tmp_path / "gold.csv"
    r = cli("labels-from-bigearthnet", small.root, "--out", out, "--nomenclature", "19")
    assert r.code == 0, r.stderr
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "filename" and sorted(r[0] for r in rows[1:]) <= sorted(small.keys)
    assert all(c in (
        "Urban fabric", "Arable land", "Pastures", "Broad-leaved forest", "Coniferous forest",
        "Transitional woodland, shrub", "Inland waters",
        "Land principally occupied by agriculture, with significant areas of natural "
        "vegetation") for c in rows[0][1:])
    # The gold file is what init-pool takes.
    api.init_pool(small.root, tmp_path / "p", labels_file=out, initial=0, image_size=SIZE,
                  val_fraction=0, test_fraction=0)
    with pytest.raises(AlftError):
        api.labels_from_bigearthnet(small.root, out, nomenclature=19)  # exists


# --------------------------------------------------------------------------------------------
# the whole loop through the CLI, both layouts
# --------------------------------------------------------------------------------------------
def _answer(proj: Path, gold_csv: Path, out: Path) -> None:
    with gold_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    gold = {r[0]: r[1:] for r in rows[1:]}
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0])
        for key in api.status(proj)["pending"]:
            writer.writerow([key, *gold[key]])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["band-folder", "file"])
def test_end_to_end_cli(tmp_path, cli, layout):
    """init-pool -> pretrain -> finetune -> query (quicklooks) -> import -> finetune -> export
    -> tag on the synthetic Sentinel-2 archive, every step through the real command."""
    data, proj = tmp_path / "s2", tmp_path / "proj"

    def ok(*args):
        r = cli(*args)
        assert r.code == 0, f"{args[0]}: {r.stderr}"
        return r

    ok("demo-data", data, "--bands", "12", "-n", "36", "--image-size", SIZE, "--layout", layout)
    ok("init-pool", data / "images", "-p", proj, "--labels", data / "labels.csv",
       "--initial", "8", "--image-size", SIZE)
    assert len(list((proj / "rounds" / "round_000" / "quicklooks").glob("*.png"))) == 8
    _answer(proj, data / "labels.csv", tmp_path / "a0.csv")
    ok("import-labels", tmp_path / "a0.csv", "-p", proj)
    ok("pretrain", "-p", proj, "--backbone", "resnet18", "--epochs", "1", "--batch-size", "8",
       "--hidden-dim", "32", "--proj-dim", "16", "--device", "cpu")
    ok("finetune", "-p", proj, "--epochs", "1", "--batch-size", "4", "--init", "pretrained",
       "--device", "cpu")
    r = ok("query", "-p", proj, "--budget", "4", "--format", "label-studio", "--device", "cpu")
    query = next(p for p in (proj / "rounds").rglob("query.csv") if "round_001" in str(p))
    with query.open(newline="", encoding="utf-8") as handle:
        queried = list(csv.DictReader(handle))
    assert len(queried) == 4 and all((query.parent / q["quicklook"]).is_file() for q in queried)
    assert "label studio" in r.stdout
    _answer(proj, data / "labels.csv", tmp_path / "a1.csv")
    ok("import-labels", tmp_path / "a1.csv", "-p", proj)
    ok("finetune", "-p", proj, "--epochs", "1", "--batch-size", "4", "--device", "cpu")
    ok("export", "-p", proj)
    model = next((proj / "exports").glob("*.onnx"))
    ok("tag", model, data / "images", "--out", tmp_path / "tags.csv", "--device", "cpu")
    with (tmp_path / "tags.csv").open(newline="", encoding="utf-8") as handle:
        tagged = list(csv.DictReader(handle))
    assert sorted(t["filename"] for t in tagged) == sorted(
        p.name for p in (data / "images").iterdir() if p.is_dir() or p.suffix == ".tif")
    status = json.loads(ok("status", "-p", proj, "--json").stdout)
    assert status["labeled"] == 12 and len(status["rounds"]) == 2


def test_doctor_checks_band_folders(small, tmp_path):
    root = tmp_path / "arch"
    shutil.copytree(small.root, root)
    api.init_pool(root, tmp_path / "p", classes="a,b", initial=0, image_size=SIZE)
    assert api.doctor(tmp_path / "p", verify_hashes=True).ok
    key = small.keys[0]
    band = root / key / f"{key}_B04.tif"
    data = bytearray(band.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    band.write_bytes(bytes(data))
    (root / small.keys[1] / f"{small.keys[1]}_B11.tif").unlink()
    report = api.doctor(tmp_path / "p", verify_hashes=True)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"sample {key}: content changed" in text
    assert f"sample {small.keys[1]}: band files missing" in text


def test_a_file_with_another_band_count_or_dtype_is_skipped(tmp_path):
    import rasterio
    from affine import Affine

    arch = generate_s2_archive(tmp_path / "a", n_images=5, image_size=SIZE, layout="file")
    profile = {"driver": "GTiff", "height": SIZE, "width": SIZE, "crs": "EPSG:32633",
               "transform": Affine(10, 0, 0, 0, -10, 0)}
    with rasterio.open(arch.root / "four.tif", "w", count=4, dtype="uint16", **profile) as dst:
        dst.write(np.ones((4, SIZE, SIZE), np.uint16))
    with rasterio.open(arch.root / "float.tif", "w", count=12, dtype="float32",
                       **profile) as dst:
        dst.write(np.ones((12, SIZE, SIZE), np.float32))
    result = api.init_pool(arch.root, tmp_path / "p", classes="a,b", initial=0,
                           image_size=SIZE)
    assert result.indexed == 5
    with result.skipped_file.open(newline="", encoding="utf-8") as handle:
        reasons = {row["filename"]: row["reason"] for row in csv.DictReader(handle)}
    assert reasons["four.tif"] == "has 4 bands, the archive's files have 12"
    assert reasons["float.tif"].startswith("is float32, the archive is uint16")


def test_relocate_a_band_folder_project(small, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(small.root, old)
    api.init_pool(old, tmp_path / "p", classes="a,b", initial=0, image_size=SIZE)
    shutil.move(old, new)
    api.relocate(tmp_path / "p", new)
    assert api.doctor(tmp_path / "p", verify_hashes=True).ok
