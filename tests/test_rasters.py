"""Multi-band rasters (issue 14): layouts, bands, dtypes, nodata, decimated reads, scaling,
the synthetic Sentinel-2 archive and the BigEarthNet label mapping."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from alft_cli import bigearthnet, rasters
from alft_cli.config import ARCHIVE_EXTENSIONS, RasterConfig
from alft_cli.errors import ArchiveError, LabelFileError, OptionError
from alft_cli.images import scan_folder
from alft_cli.synthetic_s2 import BANDS, CLASSES, VISIBLE, generate_s2_archive

SIZE = 24


@pytest.fixture(scope="module")
def s2(tmp_path_factory):
    """The same 12 synthetic patches in both layouts."""
    base = tmp_path_factory.mktemp("s2")
    return {layout: generate_s2_archive(base / layout, n_images=12, image_size=SIZE, seed=1,
                                        layout=layout)
            for layout in ("band-folder", "file")}


def _scan(root: Path, layout: str = "auto") -> rasters.RasterScan:
    listing = scan_folder(root, ARCHIVE_EXTENSIONS)
    return rasters.group_layout(listing.keys, listing.skipped, layout)


def _spec(scan: rasters.RasterScan, probe: rasters.Probe, bands=None, scale="reflectance",
          nodata=None) -> RasterConfig:
    chosen = rasters.resolve_bands(probe.names, bands)
    lo, hi = rasters.fixed_range(scale, len(chosen)) or ([0.0] * len(chosen),
                                                         [1.0] * len(chosen))
    return RasterConfig(layout=scan.layout, band_names=probe.names, bands=chosen,
                        band_indexes=[probe.names.index(b) + 1 for b in chosen],
                        count=probe.count, dtype=probe.dtype, nodata=nodata, scale=scale,
                        scale_lo=lo, scale_hi=hi)


def _write(path: Path, data: np.ndarray, nodata=None, names=None) -> None:
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
               "count": data.shape[0], "dtype": str(data.dtype), "crs": "EPSG:32633",
               "transform": Affine(10, 0, 0, 0, -10, 0), "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names or [], start=1):
            dst.set_band_description(i, name)


# --------------------------------------------------------------------------------------------
# the synthetic archive
# --------------------------------------------------------------------------------------------
def test_synthetic_s2_is_georeferenced_uint16_in_both_layouts(s2):
    folder = s2["band-folder"]
    key = folder.keys[0]
    files = sorted((folder.root / key).iterdir())
    assert [f.name for f in files if f.suffix == ".tif"] == sorted(f"{key}_{b}.tif"
                                                                    for b in BANDS)
    sizes = {}
    for band in BANDS:
        with rasterio.open(folder.root / key / f"{key}_{band}.tif") as src:
            assert src.count == 1 and src.dtypes[0] == "uint16"
            assert src.crs.to_epsg() == 32633 and src.transform.a in (10, 20, 60)
            sizes[band] = src.width
    assert sizes["B02"] == SIZE and sizes["B05"] == SIZE // 2 and sizes["B01"] == SIZE // 6
    meta = json.loads((folder.root / key / f"{key}_labels_metadata.json").read_text())
    assert meta["labels"] == [c for c, y in zip(CLASSES, folder.Y[0]) if y]
    with rasterio.open(s2["file"].root / s2["file"].keys[0]) as src:
        assert src.count == 12 and src.descriptions == BANDS and src.crs.to_epsg() == 32633
    # Same seed, same patches: the 10 m bands are identical in both layouts.
    with rasterio.open(folder.root / key / f"{key}_B04.tif") as a, \
            rasterio.open(s2["file"].root / s2["file"].keys[0]) as b:
        np.testing.assert_array_equal(a.read(1), b.read(4))
    np.testing.assert_array_equal(folder.Y, s2["file"].Y)
    # The gold file quotes the class names with commas.
    header = next(csv.reader(folder.labels_csv.open(encoding="utf-8")))
    assert header[1:] == list(CLASSES) and any("," in c for c in header)


def test_conifers_differ_from_broadleaf_only_outside_the_visible_bands():
    from alft_cli.synthetic_s2 import SPECTRA

    broad, conifer = (np.array(SPECTRA[c]) for c in ("Broad-leaved forest", "Coniferous forest"))
    visible = [BANDS.index(b) for b in VISIBLE]
    other = [i for i in range(len(BANDS)) if i not in visible]
    np.testing.assert_array_equal(broad[visible], conifer[visible])
    assert np.all(np.abs(broad[other] - conifer[other]) >= 0.03)


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------
def test_layouts_are_detected(s2):
    folder = _scan(s2["band-folder"].root)
    assert folder.layout == "band-folder"
    assert [s.key for s in folder.samples] == sorted(s2["band-folder"].keys)
    assert list(folder.samples[0].files) == list(BANDS)  # Sentinel-2 order, B8A after B08
    assert folder.skipped == []  # label JSONs are part of a band folder, not unusable files
    single = _scan(s2["file"].root)
    assert single.layout == "file" and len(single.samples) == 12


def test_forced_layouts(s2, tmp_path):
    every_file = _scan(s2["band-folder"].root, "file")
    assert every_file.layout == "file" and len(every_file.samples) == 12 * 12
    with pytest.raises(ArchiveError, match="no folder holds band files"):
        _scan(s2["file"].root, "band-folder")
    with pytest.raises(OptionError, match="--layout"):
        _scan(s2["file"].root, "tiles")


def test_mixed_layouts_are_refused_unless_forced(s2, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(s2["band-folder"].root, root)
    shutil.copy(s2["file"].root / s2["file"].keys[0], root / "loose.tif")
    with pytest.raises(ArchiveError, match="mixes band folders .* and single image files"):
        _scan(root)
    forced = _scan(root, "band-folder")
    assert ("loose.tif", "not in a band folder (--layout band-folder)") in forced.skipped


def test_duplicate_and_missing_bands(s2, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(s2["band-folder"].root, root)
    k0, k1 = s2["band-folder"].keys[:2]
    shutil.copy(root / k0 / f"{k0}_B02.tif", root / k0 / f"{k0}_B02.tiff")
    (root / k1 / f"{k1}_B05.tif").unlink()
    scan = _scan(root)
    reasons = dict(scan.skipped)
    assert reasons[k0 + "/"].startswith("duplicate band B02")
    probe = rasters.probe(root, scan)
    assert probe.names == list(BANDS)  # the band set most patches have
    spec = _spec(scan, probe)
    sample = next(s for s in scan.samples if s.key == k1)
    with pytest.raises(rasters.RasterError, match="^missing band B05$"):
        rasters.read_sample(root, sample, spec, SIZE)
    # Selecting bands the patch has reads it.
    spec = _spec(scan, probe, bands="B04,B03,B02")
    assert rasters.read_sample(root, sample, spec, SIZE)[0].shape == (3, SIZE, SIZE)


def test_unreadable_band_file_and_band_count(s2, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(s2["band-folder"].root, root)
    key = s2["band-folder"].keys[0]
    (root / key / f"{key}_B03.tif").write_bytes(b"II*\x00garbage" * 10)
    scan = _scan(root)
    spec = _spec(scan, rasters.probe(root, scan))
    sample = next(s for s in scan.samples if s.key == key)
    with pytest.raises(rasters.RasterError, match="not a readable raster"):
        rasters.read_sample(root, sample, spec, SIZE)
    # A file archive: a file with another band count than the archive.
    froot = tmp_path / "files"
    shutil.copytree(s2["file"].root, froot)
    _write(froot / "zz_four_bands.tif", np.ones((4, SIZE, SIZE), np.uint16))
    fscan = _scan(froot)
    fspec = _spec(fscan, rasters.probe(froot, _scan(s2["file"].root)))
    odd = next(s for s in fscan.samples if s.key == "zz_four_bands.tif")
    with pytest.raises(rasters.RasterError, match="has 4 bands, the archive's files have 12"):
        rasters.read_sample(froot, odd, fspec, SIZE)
    # Probing goes with what most files have; the odd file is skipped when read.
    assert rasters.probe(froot, fscan).count == 12


def test_layouts_read_the_same_pixels(s2):
    """The 10 m bands are exact in both layouts; the 20/60 m bands of a band folder are read
    onto the 10 m grid by bilinear upsampling, which keeps their mean."""
    fscan, bscan = _scan(s2["file"].root), _scan(s2["band-folder"].root)
    fspec = _spec(fscan, rasters.probe(s2["file"].root, fscan))
    bspec = _spec(bscan, rasters.probe(s2["band-folder"].root, bscan))
    raw_f, _, _ = rasters.read_sample(s2["file"].root, fscan.samples[0], fspec, SIZE)
    raw_b, mask, wh = rasters.read_sample(s2["band-folder"].root, bscan.samples[0], bspec, SIZE)
    assert wh == (SIZE, SIZE) and not mask.any()
    for band in ("B02", "B03", "B04", "B08"):
        i = BANDS.index(band)
        np.testing.assert_array_equal(raw_b[i], raw_f[i])
    key = s2["band-folder"].keys[0]
    with rasterio.open(s2["band-folder"].root / key / f"{key}_B11.tif") as src:
        native = src.read(1).astype(np.float64)
    assert abs(raw_b[BANDS.index("B11")].mean() - native.mean()) < 0.02 * native.mean()


# --------------------------------------------------------------------------------------------
# bands, dtypes, nodata, decimation
# --------------------------------------------------------------------------------------------
def test_band_selection_by_name_or_index():
    names = list(BANDS)
    assert rasters.resolve_bands(names, None) == names
    assert rasters.resolve_bands(names, "b04, B03,B02,b8a") == ["B04", "B03", "B02", "B8A"]
    assert rasters.resolve_bands(names, "4,3,2") == ["B04", "B03", "B02"]
    assert rasters.resolve_bands(["1", "2", "3"], "3,1") == ["3", "1"]
    with pytest.raises(OptionError, match="band 'B10' not found; the archive's bands are B01"):
        rasters.resolve_bands(names, "B04,B10")
    with pytest.raises(OptionError, match="index 13 is out of range"):
        rasters.resolve_bands(names, "13")
    with pytest.raises(OptionError, match="B04 is given twice"):
        rasters.resolve_bands(names, "B04,4")


def test_scale_rules():
    assert rasters.resolve_scale(None, "uint16") == "percentile"
    assert rasters.resolve_scale("auto", "uint8") == "none"
    assert rasters.resolve_scale("Reflectance", "uint16") == "reflectance"
    with pytest.raises(OptionError, match="--scale none keeps raw values and is for 8-bit"):
        rasters.resolve_scale("none", "uint16")
    with pytest.raises(OptionError, match="--scale 'stretch'"):
        rasters.resolve_scale("stretch", "uint8")
    with pytest.raises(OptionError, match="finite"):
        rasters.check_nodata(float("nan"))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32"])
def test_every_dtype_reads_exactly(tmp_path, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if dtype != "float32" else None
    if info is not None:
        data = rng.integers(info.min, min(info.max, 2**31 - 1), (5, 16, 16)).astype(dtype)
    else:
        data = rng.normal(0, 1000, (5, 16, 16)).astype(dtype)
    if dtype == "uint32":
        data = data % np.uint32(2**24)  # float32 holds integers up to 2**24 exactly
    _write(tmp_path / "a.tif", data)
    scan = _scan(tmp_path)
    probe = rasters.probe(tmp_path, scan)
    assert probe.count == 5 and probe.dtype == dtype and probe.names == ["1", "2", "3", "4", "5"]
    spec = _spec(scan, probe, bands="5,1", scale="percentile")
    raw, mask, _ = rasters.read_sample(tmp_path, scan.samples[0], spec, 16)
    np.testing.assert_array_equal(raw, data[[4, 0]].astype(np.float32))
    assert not mask.any()


def test_unsupported_dtype_is_refused(tmp_path):
    _write(tmp_path / "a.tif", np.zeros((2, 16, 16), np.float64))
    with pytest.raises(ArchiveError, match="data type float64 is not supported"):
        rasters.probe(tmp_path, _scan(tmp_path))


def test_nodata_nan_and_inf_are_masked(tmp_path):
    data = np.full((2, 16, 16), 100.0, np.float32)
    data[0, 0, 0] = -9999
    data[0, 1, 1] = np.nan
    data[1, 2, 2] = np.inf
    data[1, 3, 3] = -np.inf
    data[1, 4, 4] = 7.0
    _write(tmp_path / "a.tif", data, nodata=-9999)
    scan = _scan(tmp_path)
    probe = rasters.probe(tmp_path, scan)
    spec = _spec(scan, probe, scale="percentile")
    raw, mask, _ = rasters.read_sample(tmp_path, scan.samples[0], spec, 16)
    assert sorted(zip(*np.nonzero(mask))) == [(0, 0, 0), (0, 1, 1), (1, 2, 2), (1, 3, 3)]
    # --nodata overrides the file's value.
    raw, mask, _ = rasters.read_sample(tmp_path, scan.samples[0],
                                       _spec(scan, probe, scale="percentile", nodata=7), 16)
    assert mask[1, 4, 4] and not mask[0, 0, 0] and mask[0, 1, 1]
    x = rasters.scale_bands(raw, mask, [0, 0], [200, 200])
    assert x[1, 4, 4] == 0 and x[0, 5, 5] == pytest.approx(127.5) and np.isfinite(x).all()


def test_an_all_nodata_tile_is_refused(tmp_path):
    data = np.full((1, 16, 16), np.nan, np.float32)
    _write(tmp_path / "a.tif", data)
    scan = _scan(tmp_path)
    spec = _spec(scan, rasters.probe(tmp_path, scan), scale="percentile")
    with pytest.raises(rasters.RasterError, match="every pixel is nodata, NaN or inf"):
        rasters.read_sample(tmp_path, scan.samples[0], spec, 16)
    from alft_cli.raster_index import read_many

    items = list(read_many(tmp_path, scan.samples, spec, 16, workers=1))
    assert items[0].raw is None and "every pixel" in items[0].reason


def test_decimated_reads_use_the_overviews(tmp_path):
    """A large raster is read at the target size by GDAL, from its overview when it has one
    (here the overview holds other values than the base, so the source is visible)."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 1000, (2, 512, 512)).astype(np.uint16)
    path = tmp_path / "big.tif"
    _write(path, base)
    scan = _scan(tmp_path)
    spec = _spec(scan, rasters.probe(tmp_path, scan), scale="percentile")
    plain, _, wh = rasters.read_sample(tmp_path, scan.samples[0], spec, 64)
    assert wh == (512, 512) and plain.shape == (2, 64, 64)
    assert abs(plain.mean() - base.mean()) < 20  # decimated, averaging-like
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([8], rasterio.enums.Resampling.nearest)
    with rasterio.open(path, overview_level=0) as ovr:
        level = ovr.read().astype(np.float32)
    read, _, _ = rasters.read_sample(tmp_path, scan.samples[0], spec, 64)
    np.testing.assert_array_equal(read, level)
    assert not np.array_equal(read, plain)


def test_wants_rasterio(tiny_archive, s2):
    keys = scan_folder(tiny_archive.root).keys
    assert not rasters.wants_rasterio(keys, "file", False, tiny_archive.root)
    assert rasters.wants_rasterio(keys, "file", True, tiny_archive.root)
    fkeys = scan_folder(s2["file"].root).keys
    assert rasters.wants_rasterio(fkeys, "file", False, s2["file"].root)


def test_a_16_bit_archive_takes_the_raster_path_unless_mixed_with_jpeg_png(tmp_path):
    """An archive of 16-bit TIFFs gets the archive-wide scaling (no per-image stretch); an
    8-bit archive with the odd 16-bit TIFF keeps the Pillow path it always had."""
    from PIL import Image

    for i in range(3):
        _write(tmp_path / f"g{i}.tif", np.full((1, 16, 16), 1000 * i, np.uint16))
    keys = scan_folder(tmp_path).keys
    assert rasters.wants_rasterio(keys, "file", False, tmp_path)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    keys = scan_folder(tmp_path).keys
    assert not rasters.wants_rasterio(keys, "file", False, tmp_path)
    assert rasters.wants_rasterio(keys, "file", True, tmp_path)


def test_rgb_colour_interpretation_names_bands(tmp_path):
    data = np.zeros((3, 16, 16), np.uint8)
    _write(tmp_path / "a.tif", data)
    with rasterio.open(tmp_path / "a.tif", "r+") as dst:
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue]
    assert rasters.probe(tmp_path, _scan(tmp_path)).names == ["red", "green", "blue"]


# --------------------------------------------------------------------------------------------
# scaling
# --------------------------------------------------------------------------------------------
def test_scale_bands_formula():
    raw = np.array([[[0, 5000, 10000, 20000]], [[-5, 10, 15, 30]]], np.float32)
    mask = np.zeros(raw.shape, bool)
    mask[1, 0, 3] = True
    out = rasters.scale_bands(raw, mask, [0, 10], [10000, 20])
    np.testing.assert_allclose(out, [[[0, 127.5, 255, 255]], [[0, 0, 127.5, 0]]])
    assert out.dtype == np.float32


def test_percentile_range_is_numpys_on_the_unmasked_pixels():
    rng = np.random.default_rng(2)
    reads = []
    for _ in range(3):
        raw = rng.gamma(2.0, 500.0, (2, 20, 20)).astype(np.float32)
        mask = rng.random(raw.shape) < 0.1
        reads.append((raw, mask))
    lo, hi, used = rasters.percentile_range(reads, seed=0)
    assert used == 3
    for b in range(2):
        values = np.concatenate([r[b][~m[b]] for r, m in reads]).astype(np.float64)
        assert lo[b] == pytest.approx(np.percentile(values, 2))
        assert hi[b] == pytest.approx(np.percentile(values, 98))
    flat = [(np.full((1, 4, 4), 5.0, np.float32), np.zeros((1, 4, 4), bool))]
    assert rasters.percentile_range(flat, seed=0)[:2] == ([5.0], [6.0])
    with pytest.raises(ArchiveError, match="no valid pixel"):
        rasters.percentile_range([(flat[0][0], np.ones((1, 4, 4), bool))], seed=0)


def test_percentile_sample_is_seeded():
    a = rasters.percentile_sample(1000, seed=3)
    assert len(a) == rasters.PERCENTILE_SAMPLES and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, rasters.percentile_sample(1000, seed=3))
    assert not np.array_equal(a, rasters.percentile_sample(1000, seed=4))
    np.testing.assert_array_equal(rasters.percentile_sample(5, seed=0), np.arange(5))


# --------------------------------------------------------------------------------------------
# BigEarthNet labels
# --------------------------------------------------------------------------------------------
def test_43_to_19_mapping_is_complete():
    assert set(bigearthnet.TO_19) == set(bigearthnet.CLASSES_43) and len(bigearthnet.TO_19) == 43
    targets = {v for v in bigearthnet.TO_19.values() if v is not None}
    assert targets == set(bigearthnet.CLASSES_19) and len(bigearthnet.CLASSES_19) == 19
    dropped = sorted(k for k, v in bigearthnet.TO_19.items() if v is None)
    assert len(dropped) == 11 and "Bare rock" in dropped and "Airports" in dropped
    assert bigearthnet.to_19(["Water bodies", "Sea and ocean", "Water courses"]) == [
        "Inland waters", "Marine waters"]
    assert bigearthnet.to_19(["Transitional woodland/shrub"]) == ["Transitional woodland, shrub"]


def test_read_v1_labels_and_the_19_class_mapping(s2, tmp_path):
    root = tmp_path / "ben"
    shutil.copytree(s2["band-folder"].root, root)
    keys = s2["band-folder"].keys
    # One patch labeled only with a class the 19-class nomenclature drops, one without labels.
    (root / keys[0] / f"{keys[0]}_labels_metadata.json").write_text(
        json.dumps({"labels": ["Bare rock"]}))
    (root / keys[1] / f"{keys[1]}_labels_metadata.json").unlink()
    got43 = bigearthnet.read_labels(root, keys, 43)
    assert dict(got43.rows)[keys[0]] == ["Bare rock"] and got43.missing == [keys[1]]
    want = {k: [c for c, y in zip(CLASSES, row) if y]
            for k, row in zip(keys, s2["band-folder"].Y)}
    for key, labels in got43.rows[1:]:
        assert sorted(labels) == sorted(want[key])
    got19 = bigearthnet.read_labels(root, keys, 19)
    assert got19.unmapped == [keys[0]] and keys[0] not in dict(got19.rows)
    assert any("no class in the 19-class nomenclature" in n for n in got19.notes)
    assert set(got19.classes) <= set(bigearthnet.CLASSES_19)
    # The one-hot CSV quotes names with commas and reads back with any CSV reader.
    rows = list(csv.reader(io.StringIO(bigearthnet.onehot_csv(got19))))
    assert rows[0] == ["filename", *got19.classes]
    assert any("," in c for c in rows[0])
    assert len(rows) == len(got19.rows) + 1


def test_bad_v1_label_files_are_refused_in_one_error(s2, tmp_path):
    root = tmp_path / "ben"
    shutil.copytree(s2["band-folder"].root, root)
    keys = s2["band-folder"].keys
    (root / keys[0] / f"{keys[0]}_labels_metadata.json").write_text("{not json")
    (root / keys[1] / f"{keys[1]}_labels_metadata.json").write_text(
        json.dumps({"labels": ["Lava fields"]}))
    with pytest.raises(LabelFileError) as err:
        bigearthnet.read_labels(root, keys, 43)
    assert err.value.message.startswith("2 BigEarthNet label problems")
    assert any("unknown class 'Lava fields'" in d for d in err.value.details)
    with pytest.raises(OptionError, match="43 or 19"):
        bigearthnet.read_labels(root, keys, 10)


def test_read_v2_metadata_table(s2, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    keys = s2["band-folder"].keys
    table = pa.table({"patch_id": keys[:3],
                      "labels": [["Arable land"], ["Inland waters", "Marine waters"], []],
                      "split": ["train"] * 3})
    pq.write_table(table, tmp_path / "metadata.parquet")
    got = bigearthnet.read_labels(s2["band-folder"].root, [f"T1/{k}" for k in keys[:4]], 19,
                                  metadata=tmp_path / "metadata.parquet")
    assert got.rows == [(f"T1/{keys[0]}", ["Arable land"]),
                        (f"T1/{keys[1]}", ["Inland waters", "Marine waters"])]
    assert got.unmapped == [f"T1/{keys[2]}"] and got.missing == [f"T1/{keys[3]}"]
    with pytest.raises(OptionError, match="v2 metadata holds the 19-class labels"):
        bigearthnet.read_labels(s2["band-folder"].root, keys, 43,
                                metadata=tmp_path / "metadata.parquet")
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(LabelFileError, match="not a BigEarthNet v2 metadata table"):
        bigearthnet.read_labels(s2["band-folder"].root, keys, 19,
                                metadata=tmp_path / "bad.parquet")


# --------------------------------------------------------------------------------------------
# indexing and quicklooks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["band-folder", "file"])
def test_index_fills_a_float16_cache_with_the_model_input(s2, tmp_path, layout):
    from alft_cli import raster_index

    arch = s2[layout]
    listing = scan_folder(arch.root, ARCHIVE_EXTENSIONS)
    plan = raster_index.plan(arch.root, listing.keys, listing.skipped,
                             raster_index.RasterOptions(bands="B04,B03,B02,B08"))
    assert plan.scan.layout == layout and plan.scale == "percentile"
    result = raster_index.index(plan, arch.root, tmp_path / "c.npy", SIZE, seed=0, workers=2)
    cache = np.load(tmp_path / "c.npy")
    assert cache.dtype == np.float16 and cache.shape == (12, 4, SIZE, SIZE)
    spec = result.spec
    assert spec.bands == ["B04", "B03", "B02", "B08"] and spec.percentile_samples == 12
    for row, rec in result.records:
        sample = next(s for s in plan.scan.samples if s.key == rec.key)
        want = rasters.model_input(arch.root, sample, spec, SIZE)
        np.testing.assert_allclose(cache[row].astype(np.float32), want, rtol=1e-3, atol=0.02)
    values = cache.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(result.mean, values.mean(1) / 255, atol=1e-4)
    np.testing.assert_allclose(result.std, values.std(1) / 255, atol=1e-4)
    assert raster_index.cache_bytes_per_sample(4, SIZE) == 4 * SIZE * SIZE * 2


def test_rgb_archives_keep_the_pillow_path_and_bad_options(tiny_archive, s2):
    from alft_cli import raster_index

    listing = scan_folder(tiny_archive.root, ARCHIVE_EXTENSIONS)
    assert raster_index.plan(tiny_archive.root, listing.keys, listing.skipped,
                             raster_index.RasterOptions()) is None
    s2_listing = scan_folder(s2["file"].root, ARCHIVE_EXTENSIONS)
    with pytest.raises(OptionError, match="--in-channels 3 does not match the 12 bands"):
        raster_index.plan(s2["file"].root, s2_listing.keys, s2_listing.skipped,
                          raster_index.RasterOptions(), in_channels=3)
    with pytest.raises(OptionError, match="--scale none keeps raw values"):
        raster_index.plan(s2["file"].root, s2_listing.keys, s2_listing.skipped,
                          raster_index.RasterOptions(scale="none"))


def test_quicklooks(tmp_path):
    from PIL import Image

    from alft_cli import quicklooks

    names = list(BANDS)
    assert quicklooks.preview_bands(names) == ["B04", "B03", "B02"]
    assert quicklooks.preview_bands(["red", "green", "blue", "nir"]) == ["red", "green", "blue"]
    assert quicklooks.preview_bands(["B08", "B11", "B12", "B8A"]) == ["B08", "B11", "B12"]
    assert quicklooks.preview_bands(names, "B08,B04,B03") == ["B08", "B04", "B03"]
    assert quicklooks.preview_bands(names, "8") == ["B08"]
    with pytest.raises(OptionError, match="--preview-bands: give 3 bands"):
        quicklooks.preview_bands(names, "B04,B03")
    with pytest.raises(OptionError, match="--preview-bands: band 'B99' not found"):
        quicklooks.preview_bands(names, "B99,B03,B02")
    ramp = np.tile(np.linspace(0, 1000, 100, dtype=np.float32), (3, 100, 1))
    ramp[1] *= 2  # a brighter band gets its own stretch
    rgb = quicklooks.render(ramp)
    assert rgb.shape == (300, 300, 3) and rgb.dtype == np.uint8
    assert rgb[:, :3].max() == 0 and rgb[:, -3:].min() == 255
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    path = quicklooks.write(tmp_path / "q", 3, "T1/S2A patch/x", ramp[:1])
    assert path.name == "0003_T1__S2A_patch__x.png"
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (300, 300)


def test_more_bands_than_a_model_takes_must_be_chosen(tmp_path):
    from alft_cli import raster_index

    _write(tmp_path / "hyper.tif", np.zeros((70, 8, 8), np.uint16))
    listing = scan_folder(tmp_path, ARCHIVE_EXTENSIONS)
    with pytest.raises(OptionError, match="70 bands selected; alft models take at most 64"):
        raster_index.plan(tmp_path, listing.keys, listing.skipped, raster_index.RasterOptions())
    plan = raster_index.plan(tmp_path, listing.keys, listing.skipped,
                             raster_index.RasterOptions(bands="1,35,70"))
    assert plan.bands == ["1", "35", "70"]
