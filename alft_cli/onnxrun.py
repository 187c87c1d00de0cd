"""An onnxruntime session for an exported alft model: the provider a device allows (CUDA with
cuDNN's heuristic algorithm search, else CPU with a clear reason), and what the model's
metadata says about itself (:class:`ModelInfo`)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli.config import RasterConfig
from alft_cli.errors import CheckpointError, OptionError

DEVICES = ("auto", "cpu", "cuda")

@dataclass(frozen=True)
class ModelInfo:
    """What an alft ONNX file says about itself (its ``metadata_props``)."""

    classes: list[str]
    thresholds: np.ndarray
    input_name: str
    output_name: str
    image_size: int
    in_channels: int
    metadata: dict[str, str]
    raster: RasterConfig | None = None  # a multi-band model: how its archives are read


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def open_session(model_path: Path | str, device: str = "auto",
                 threads: int | None = None) -> tuple[Any, str]:
    """Open an onnxruntime session on the best provider ``device`` allows.

    ``auto`` uses CUDA when onnxruntime has the CUDA provider and a GPU is there, else the
    CPU; ``cuda`` without a usable GPU is an error rather than a silent CPU run.

    Args:
        model_path: the .onnx file.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: intra-op threads for the CPU provider; default: the usable cores.

    Returns:
        ``(session, provider)`` where provider is e.g. ``"CUDAExecutionProvider"``.

    Raises:
        OptionError: unknown device, or ``cuda`` without a usable GPU.
        CheckpointError: the file is missing or not a readable ONNX model.
    """
    session, provider, _ = open_session_with_reason(model_path, device, threads)
    return session, provider


# onnxruntime's CUDA provider searches cuDNN's convolution algorithms exhaustively by
# default, again for every new input shape: a tag run's last, partial batch (and every shard's)
# would pay seconds of benchmarking for a handful of images. The heuristic choice costs
# nothing and is what cuDNN's own frameworks use by default.
CUDA_PROVIDER_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}

# Decoding threads run while the model does; spinning inference threads would steal their
# cores (bench/bench_tag.py --spinning measures the other choice).
ORT_ALLOW_SPINNING = False


def open_session_with_reason(model_path: Path | str, device: str, threads: int | None
                  ) -> tuple[Any, str, str | None]:
    """:func:`open_session`, plus why the GPU was not used under ``auto`` (or None)."""
    import onnxruntime as ort

    device = (device or "auto").lower()
    if device not in DEVICES:
        raise OptionError(f"--device {device!r}: use auto, cpu or cuda")
    path = Path(model_path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist")
    # Provider-load warnings are noise for the user; failures surface as errors below.
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if ORT_ALLOW_SPINNING else "0")

    problem: str | None = None
    if device in ("auto", "cuda"):
        problem = _cuda_problem(ort)
        if problem is None:
            session, error = _try_session(ort, path, options,
                                          [("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS),
                                           "CPUExecutionProvider"])
            if session is not None and session.get_providers()[0] == "CUDAExecutionProvider":
                return session, "CUDAExecutionProvider", None
            problem = ("onnxruntime could not start its CUDA provider ("
                       + (error or "CUDA/cuDNN libraries not found?") + ")")
        if device == "cuda":
            raise OptionError(f"--device cuda: {problem}; use --device cpu or auto")
    session, error = _try_session(ort, path, options, ["CPUExecutionProvider"])
    if session is None:
        raise CheckpointError(f"{path} is not a readable ONNX model ({error})")
    return session, "CPUExecutionProvider", problem


def _try_session(ort: Any, path: Path, options: Any,
                 providers: list[str | tuple[str, dict[str, str]]]
                 ) -> tuple[Any | None, str | None]:
    """A session, or (None, why); for a GPU provider that did not load, also why."""
    # enable_fallback=0: onnxruntime's own fallback prints banners to stdout; falling back
    # is decided here instead. A provider library that fails to load is logged by the C++
    # side straight to stderr at error level, which no severity setting short of "fatal"
    # hides; it is captured and its reason reported in one line instead.
    captured: list[str] = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), _stderr_captured(captured):
            session = ort.InferenceSession(str(path), options, providers=providers,
                                           enable_fallback=0)
    except Exception as exc:  # onnxruntime raises its own (non-RuntimeError) classes
        text = str(exc).strip().splitlines()
        return None, (text[0][:200] if text else type(exc).__name__)
    reason = next((line.rsplit("with error: ", 1)[1].strip() for line in captured
                   if "with error: " in line), None)
    return session, reason


@contextlib.contextmanager
def _stderr_captured(lines: list[str]) -> Iterator[None]:
    """Redirect file descriptor 2 (C++ logging) to a temp file; its lines go to ``lines``."""
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def _cuda_problem(ort: Any) -> str | None:
    """Why the CUDA provider cannot be used here, or None (then its libraries are loaded)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
    if cuda_device_count() == 0:
        return "no CUDA GPU is available"
    # onnxruntime-gpu finds CUDA/cuDNN only if they are already loaded or on the library
    # path; torch ships them as wheels and loads them when imported.
    try:
        import torch  # noqa: F401
    except ImportError:
        if hasattr(ort, "preload_dlls"):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
                ort.preload_dlls()
    return None


def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without driver or GPU), without importing torch."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return int(count.value)


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def read_model_info(session: Any, path: Path | str = "model") -> ModelInfo:
    """Classes, thresholds and input geometry from an alft model's metadata.

    Raises:
        CheckpointError: the model was not written by ``alft export`` or its metadata is
            inconsistent with its graph.
    """
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "classes" not in meta or "alft_version" not in meta:
        raise CheckpointError(f"{path} is not an alft model (no alft metadata: classes, "
                              "thresholds, input size); export one with alft export")
    try:
        classes = [str(c) for c in json.loads(meta["classes"])]
        thresholds = np.asarray(json.loads(meta.get("thresholds") or "null")
                                or [0.5] * len(classes), dtype=np.float64)
        size = int(meta["input_size"])
        channels = int(meta.get("in_channels", "3"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable alft metadata ({exc})") from exc
    if not classes or thresholds.shape != (len(classes),):
        raise CheckpointError(f"{path}: metadata has {len(classes)} classes but "
                              f"{thresholds.size} thresholds")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    input_name = meta.get("input_name", inputs[0].name)
    output_name = meta.get("output_name", outputs[0].name)
    graph_input = next((i for i in inputs if i.name == input_name), None)
    if graph_input is None or output_name not in [o.name for o in outputs]:
        raise CheckpointError(f"{path}: the graph has no input {input_name!r} or output "
                              f"{output_name!r} named in its metadata")
    shape = list(graph_input.shape)
    if len(shape) != 4 or shape[1:] != [channels, size, size]:
        raise CheckpointError(f"{path}: input shape {shape} does not match the metadata "
                              f"({channels} x {size} x {size})")
    raster = None
    if meta.get("raster"):
        try:
            raster = RasterConfig.model_validate_json(meta["raster"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable 'raster' metadata ({exc})") from exc
        if len(raster.bands) != channels:
            raise CheckpointError(f"{path}: metadata names {len(raster.bands)} bands for a "
                                  f"{channels}-band input")
    return ModelInfo(classes, thresholds, input_name, output_name, size, channels, meta, raster)
