"""Export a round's classifier to one self-contained ONNX file, with everything needed to use it.

The graph takes raw pixels and returns per-class probabilities (sigmoid of the logits: the
paper's multi-label model is trained with binary cross-entropy, Moellenbrok & Demir, IGARSS
2023). Normalization lives inside the graph, so a caller cannot apply the wrong statistics.
Classes, decision thresholds and the preprocessing are stored as ONNX ``metadata_props``,
so the file alone is enough to tag images; no alft is needed at deployment.

Example (plain onnxruntime, no alft needed)::

    import json

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"])
    thresholds = json.loads(meta["thresholds"])
    size = int(meta["input_size"])
    with Image.open(IMAGE_PATH) as img:  # decoded at full resolution, as alft does
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None]  # (1, 3, S, S), 0..255
    probabilities = sess.run(["probabilities"], {meta["input_name"]: x})[0][0]
    labels = [c for c, p, t in zip(classes, probabilities, thresholds) if p >= t]

(8-bit RGB images.) A multi-band model (an archive read with rasterio) also stores
``raster``, ``bands``, ``band_layout``, ``read``, ``nodata`` and ``scaling``: read the bands
with rasterio as ``read`` says, mask as ``nodata`` says, scale with ``scale_lo``/``scale_hi``
as ``scaling`` says, and feed the float32 result (no rounding)::

    import rasterio
    from rasterio.enums import Resampling

    raster = json.loads(meta["raster"])
    lo = np.asarray(raster["scale_lo"], np.float32)[:, None, None]
    hi = np.asarray(raster["scale_hi"], np.float32)[:, None, None]
    with rasterio.open(FILE_PATH) as src:  # layout "file"; a band folder: one file per band
        x = src.read(raster["band_indexes"], out_shape=(len(lo), size, size),
                     resampling=Resampling.bilinear, out_dtype="float32")
        nodata = raster["nodata"] if raster["nodata"] is not None else src.nodata
    masked = ~np.isfinite(x) | ((x == np.float32(nodata)) if nodata is not None else False)
    x = np.clip((x - lo) / (hi - lo), 0, 1) * np.float32(255)
    x[masked] = 0

``alft tag`` does the same for a whole archive, streaming.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alft_cli import __version__
from alft_cli.atomic import atomic_write_bytes
from alft_cli.config import RasterConfig
from alft_cli.data import CachedImages, resolve_device
from alft_cli.errors import AlftError, OptionError
from alft_cli.images import CONVERSIONS, RESIZE_METHOD
from alft_cli.progress import reporter
from alft_cli.project import Project

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Opset 17 runs on every onnxruntime of the last years (1.14+), and has all the ops needed.
OPSET = 17
PARITY_IMAGES = 32
PARITY_TOLERANCE = 1e-4
DEFAULT_THRESHOLD = 0.5  # the paper's decision threshold
# protobuf cannot serialize a message above 2 GiB; larger models would need external data.
_PROTOBUF_LIMIT = 2**31 - 1
USAGE = (
    "input 'image': float32 (N, C, S, S), raw 0-255 pixels in channel_order, resized to "
    "input_size x input_size as in 'resize' (no normalization: it is inside the graph); "
    "output 'probabilities': (N, len(classes)) sigmoid outputs in 'classes' order; "
    "an image has class k when probabilities[k] >= thresholds[k]"
)


@dataclass
class ExportResult:
    """What export wrote.

    Attributes:
        path: the .onnx file.
        round: the round whose model was exported.
        parity_max_abs_diff: max |p_onnxruntime - p_torch| over the parity images.
        thresholds: per-class decision thresholds stored in the file.
        metadata: the ``metadata_props`` written (all strings).
        providers_checked: onnxruntime providers the parity check ran on.
        parity_images: how many project images the parity check used.
    """

    path: Path
    round: int
    parity_max_abs_diff: float
    thresholds: list[float]
    metadata: dict[str, str]
    providers_checked: list[str] = field(default_factory=list)
    parity_images: int = 0


class Probabilities(nn.Module):
    """``sigmoid(classifier(x))``: the exported graph returns probabilities, not logits."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, C) of a 0..255 batch (N, C_in, S, S)."""
        return torch.sigmoid(self.classifier(x))


def export_project(project: Project, round_: int | None = None, out: Path | None = None,
                   calibrate_thresholds: bool = False, device: str = "cpu") -> ExportResult:
    """Export a round's classifier to ONNX, check it, and verify it against torch.

    The file is checked with ``onnx.checker`` and its outputs are compared with the torch
    model (fp32, eval) on up to 32 project images; a difference above 1e-4 is an error and
    no file is left behind. An earlier file at ``out`` is replaced only by a verified one.

    Example:
        >>> from alft_cli.project import open_project
        >>> result = export_project(open_project("proj"), calibrate_thresholds=True)
        >>> result.path, result.parity_max_abs_diff

    Args:
        project: an opened project.
        round_: the round to export; None for the latest round with a trained model.
        out: where to write; default ``<project>/exports/alft_round<r>.onnx``.
        calibrate_thresholds: store per-class thresholds that maximise each class's F1 on
            the validation set instead of the paper's 0.5.
        device: torch device for the calibration pass (``auto``, ``cpu``, ``cuda``); the
            parity check always runs in fp32 on the CPU.

    Returns:
        What was written, with the parity figure.

    Raises:
        OptionError: no trained model, an unknown round, or calibration without val labels.
        AlftError: the exported graph does not reproduce the torch model.
    """
    import onnx

    from alft_cli.finetune import load_round_model

    rep = reporter()
    record = _pick_round(project, round_)
    others = [str(r.round) for r in project.store.rounds() if r.model_file
              and r.round != record.round and project.resolve(r.model_file).is_file()]
    model, meta = load_round_model(
        project.root, record.model_file, record.round,
        (f"export another round: alft export -p {project.root} --round {others[-1]} (rounds "
         f"with a model file: {', '.join(others)}), or " if others else "")
        + f"train the round again: alft finetune -p {project.root}")
    model = model.float().eval()
    classes = [str(c) for c in (meta.get("classes") or project.classes)]
    size = int(meta.get("image_size") or project.config.image_size)
    if out is None:
        out = project.exports_dir / f"alft_round{record.round:03d}.onnx"
    out = Path(out)
    if out.exists() and out.is_dir():
        raise OptionError(f"--out {out} is a folder; give a file name ending in .onnx")

    cache = CachedImages(project.cache_path)
    thresholds = [DEFAULT_THRESHOLD] * len(classes)
    source = f"default {DEFAULT_THRESHOLD} for every class (the paper's)"
    if calibrate_thresholds:
        val_ids, val_y = project.store.gold("val")
        if len(val_ids) == 0:
            raise OptionError("--calibrate-thresholds needs validation images with gold labels; "
                              "this project has none (give --labels at init-pool)")
        thresholds = _calibrate(model, cache, val_ids, val_y, resolve_device(device))
        source = f"per-class best F1 on {len(val_ids)} validation images"
        model = model.cpu()

    metadata = model_metadata(model, classes, thresholds, size, source, project.config.raster)
    metadata.update(_round_metadata(record, meta))
    data = classifier_to_onnx(model, size, metadata)
    # Check the exact bytes that will be written, before they replace anything.
    try:
        onnx.checker.check_model(data, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise AlftError(f"the exported graph is not valid ONNX: {_first_line(exc)}") from exc
    parity_ids = _parity_ids(project)
    diff = _parity(Probabilities(model).eval(), data,
                   cache.read(parity_ids).astype(np.float32))
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise AlftError(f"onnxruntime and torch disagree by {diff:.2e} (> {PARITY_TOLERANCE:g}) "
                        f"on {len(parity_ids)} project images; nothing was written")
    atomic_write_bytes(out, data)
    rep.info(f"exported round {record.round} to {out} ({len(data) / 2**20:.1f} MiB); "
             f"parity onnxruntime vs torch on {len(parity_ids)} images: max |dp| = {diff:.1e}")
    return ExportResult(out, record.round, float(diff), [float(t) for t in thresholds],
                        metadata, ["CPUExecutionProvider"], len(parity_ids))


def classifier_to_onnx(model: nn.Module, image_size: int, metadata: dict[str, str]) -> bytes:
    """Serialize ``sigmoid(model(x))`` as one self-contained ONNX model with ``metadata``.

    Args:
        model: a :class:`~alft_cli.models.Classifier` (normalization inside, 0..255 input).
        image_size: side S of the square input; the batch axis is dynamic.
        metadata: ``metadata_props`` to store (see :func:`model_metadata`).

    Returns:
        The model file's bytes (opset 17; input ``image`` (N, C, S, S) float32, output
        ``probabilities`` (N, num_classes)).
    """
    model = model.cpu().float().eval()
    example = torch.zeros(2, int(model.config["in_channels"]), image_size, image_size)
    proto = _to_onnx(Probabilities(model).eval(), example)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    proto.doc_string = "alft multi-label classifier. " + USAGE
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise AlftError(f"the model is {proto.ByteSize() / 2**30:.1f} GiB; one ONNX file holds "
                        "at most 2 GiB")
    return proto.SerializeToString()


def _pick_round(project: Project, round_: int | None) -> Any:
    with_model = [r for r in project.store.rounds() if r.model_file]
    if not with_model:
        raise OptionError("no trained model to export: run alft finetune first")
    if round_ is None:
        return with_model[-1]
    match = next((r for r in with_model if r.round == round_), None)
    if match is None:
        rounds = ", ".join(str(r.round) for r in with_model)
        raise OptionError(f"--round {round_} has no trained model (rounds with a model: "
                          f"{rounds})")
    return match


@torch.no_grad()
def _calibrate(model: nn.Module, cache: CachedImages, ids: np.ndarray, y: np.ndarray,
               device: torch.device, batch_size: int = 64) -> list[float]:
    from alft_cli.metrics import best_f1_thresholds

    # fp32 (no autocast): the thresholds are applied to the exported fp32 graph's outputs.
    model.to(device)
    parts = []
    with reporter().task("calibrating thresholds", total=len(ids)) as task:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            x = torch.from_numpy(cache.read(chunk)).to(device).float()
            parts.append(torch.sigmoid(model(x)).float().cpu().numpy())
            task.advance(len(chunk))
    thresholds = best_f1_thresholds(y, np.concatenate(parts), default=DEFAULT_THRESHOLD)
    return [float(t) for t in np.clip(thresholds, 0.0, 1.0)]


def model_metadata(model: nn.Module, classes: list[str], thresholds: list[float],
                   image_size: int, thresholds_source: str = "",
                   raster: RasterConfig | None = None) -> dict[str, str]:
    """The ``metadata_props`` that make an exported classifier usable on its own.

    Args:
        model: the :class:`~alft_cli.models.Classifier` (its ``config`` gives backbone,
            bands and normalization).
        classes: class names in output order.
        thresholds: per-class decision thresholds.
        image_size: input side S.
        thresholds_source: how the thresholds were chosen (free text).
        raster: how a multi-band project reads and scales its archive (None: 8-bit images
            read with Pillow).

    Returns:
        String keys and values (JSON for lists).
    """
    config = model.config
    in_channels = int(config["in_channels"])
    order = {1: "gray", 3: "RGB"}.get(in_channels, f"{in_channels} bands in file order")
    items: dict[str, Any] = {
        "alft_format": "1",
        "task": "multi-label",
        "classes": json.dumps(classes),
        "thresholds": json.dumps([float(t) for t in thresholds]),
        "thresholds_source": thresholds_source or "given",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": "NCHW",
        "input_size": str(int(image_size)),
        "in_channels": str(in_channels),
        "channel_order": order,
        "input_range": "0-255 float32; normalization is applied inside the model",
        "normalization": "(x / 255 - mean) / std per channel, ALREADY inside the graph; "
                         "do not normalize again",
        "normalization_mean": json.dumps([float(m) for m in config["mean"]]),
        "normalization_std": json.dumps([float(s) for s in config["std"]]),
        "resize": RESIZE_METHOD,
        "conversions": CONVERSIONS,
        "backbone": str(config["backbone"]),
        "alft_version": __version__,
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usage": USAGE,
    }
    if raster is not None:
        items.update(raster_metadata(raster, int(image_size)))
    return {k: str(v) for k, v in items.items()}


def raster_metadata(raster: RasterConfig, size: int) -> dict[str, str]:
    """The metadata of a multi-band model: enough for a plain rasterio + numpy script to
    build exactly the input ``alft tag`` builds (see :mod:`alft_cli.rasters`)."""
    bands = ", ".join(raster.bands)
    if raster.layout == "file":
        read = (f"rasterio: with rasterio.open(file) as src: x = src.read(band_indexes, "
                f"out_shape=({len(raster.bands)}, {size}, {size}), resampling=Resampling."
                f"{raster.resampling}, out_dtype='float32'); band_indexes (1-based) = "
                f"{raster.band_indexes}; every file has {raster.count} bands "
                f"({', '.join(raster.band_names)})")
        layout = "file: one multi-band file per sample"
    else:
        read = (f"rasterio, per band in 'bands' order: the sample folder's file "
                f"<patch>_<BAND>.tif/.tiff/.jp2; src.read(1, out_shape=({size}, {size}), "
                f"resampling=Resampling.{raster.resampling}, out_dtype='float32') (bands of "
                "every resolution onto the same grid)")
        layout = ("band-folder: one folder per sample, one single-band file per band named "
                  "<patch>_<BAND>.tif (BigEarthNet); the sample key is the folder")
    if raster.scale == "percentile":
        rule = (f"percentile: per-band {_percentiles()} percentiles of "
                f"{raster.percentile_samples} archive samples (seeded), fixed at init-pool")
    elif raster.scale == "reflectance":
        rule = "reflectance: digital number / 10000 (Sentinel-2 L2A), clipped to 0..1"
    else:
        rule = "none: 8-bit values as they are (0..255)"
    nodata = (f"pixels equal to {raster.nodata:g}" if raster.nodata is not None
              else "pixels equal to each file's own nodata value (if it has one)")
    return {
        "raster": raster.model_dump_json(),
        "bands": json.dumps(raster.bands),
        "band_layout": layout,
        "channel_order": f"bands {bands}, in this order",
        "read": read,
        "resize": (f"GDAL decimated read onto the {size} x {size} grid, resampling "
                   f"{raster.resampling} (overviews used when the file has them); aspect not "
                   "kept"),
        "nodata": (f"{nodata} and non-finite pixels (NaN, inf) are masked; masked pixels are "
                   "0 after scaling; a sample with every pixel masked is skipped"),
        "scaling": ("x_scaled = clip((x - scale_lo) / (scale_hi - scale_lo), 0, 1) * 255 per "
                    f"band, float32, no rounding; rule {rule}"),
        "scale_lo": json.dumps(raster.scale_lo),
        "scale_hi": json.dumps(raster.scale_hi),
        "conversions": "none (no per-image stretch: one scaling for the whole archive)",
        "input_range": "0-255 float32 as in 'scaling'; normalization is inside the model",
    }


def _percentiles() -> str:
    from alft_cli.rasters import PERCENTILES

    return f"{PERCENTILES[0]:g}-{PERCENTILES[1]:g}%"


def _round_metadata(record: Any, meta: dict[str, Any]) -> dict[str, str]:
    items: dict[str, Any] = {
        "round": str(record.round),
        "labels_used": str(meta.get("trained_on", record.trained_on)),
    }
    metrics = _flat_metrics(meta.get("metrics"), record.metrics)
    for key in ("val_micro_f1", "val_macro_f1", "val_mAP", "test_micro_f1", "test_macro_f1",
                "test_mAP"):
        if key in metrics:
            items[key] = f"{metrics[key]:.6f}"
    return {k: str(v) for k, v in items.items()}


def _flat_metrics(headline: Any, nested: Any) -> dict[str, float]:
    flat: dict[str, float] = {}
    if isinstance(nested, dict):
        for split in ("val", "test"):
            values = nested.get(split)
            if isinstance(values, dict):
                for key, value in values.items():
                    if isinstance(value, (int, float)):
                        flat[f"{split}_{key}"] = float(value)
    if isinstance(headline, dict):  # the model file's own figures win
        flat.update({k: float(v) for k, v in headline.items() if isinstance(v, (int, float))})
    return flat


def _to_onnx(module: nn.Module, example: torch.Tensor) -> Any:
    """Trace ``module`` with the TorchScript exporter into an in-memory ``ModelProto``."""
    import io

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript; it is still supported and gives a plain, self-contained graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _parity_ids(project: Project) -> np.ndarray:
    """Up to 32 project images, spread over val, test and pool (deterministic)."""
    ids = np.concatenate([project.store.sample_ids(s) for s in ("val", "test", "pool")])
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) > PARITY_IMAGES:
        ids = ids[np.linspace(0, len(ids) - 1, PARITY_IMAGES).round().astype(np.int64)]
    return ids


@torch.no_grad()
def _parity(module: nn.Module, model_bytes: bytes, images: np.ndarray) -> float:
    """Max |p_onnxruntime - p_torch| on ``images`` (N, C, S, S) float32, CPU, fp32."""
    import onnxruntime as ort

    if len(images) == 0:
        return 0.0
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    module = module.cpu().float().eval()
    want = module(torch.from_numpy(images)).numpy()
    if got.shape != want.shape:
        raise AlftError(f"the exported graph returns {got.shape}, torch {want.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
