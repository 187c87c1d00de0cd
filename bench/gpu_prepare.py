"""Fill the git-ignored folder a GPU lease carries (run HERE, never on the device).

The lent machine (see bench/README.md, "GPU check") has Python 3.12 with its own torch,
torchvision, onnxruntime (CPU-only), typer, rich, scikit-learn, matplotlib, onnx... but no
pydantic, and no network: what alft needs beyond its packages travels as wheels, and the
benchmark data travels as files, both in ``.gpu-carry/`` (git-ignored; named in the device
call's ``carry``)::

    .gpu-carry/wheels/        wheels of what the device lacks, for cp312 manylinux x86_64
    .gpu-carry/ucmerced-ml/   a copy of ../shared/data/ucmerced-ml (images/ + labels.csv)

Which wheels: every dependency in pyproject.toml that the device image does not hold
(``DEVICE_PACKAGES``, read off /work/.library/device/KINDS.md, 2026-11-17), with everything
they require in turn, at the versions installed here (so the set is the one the tests run
with), plus ``ALWAYS_CARRY`` (packages the device has, possibly too old for the carried ones).
At the end the size of everything that would travel is summed (bench/gpu_travel_size.py), and
the script fails if it exceeds the lease's 64 MiB.

Usage:
    python bench/gpu_prepare.py                     # wheels for the device + UC Merced
    python bench/gpu_prepare.py --no-data           # wheels only
    python bench/gpu_prepare.py --skip rasterio     # leave out a dependency the check
        # does not need (when carrying it would pass 64 MiB)
    python bench/gpu_prepare.py --this-python --wheels DIR --no-data   # wheels for the
        # running interpreter and platform (the CPU test of bench/gpu_check.sh uses this)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu-carry"
UCM = REPO.parent / "shared" / "data" / "ucmerced-ml"

# Distributions on the device image (KINDS.md, "Python packages already there", 2026-11-17),
# normalised names.
DEVICE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp
""".split())
# The device's onnxruntime (CPU) serves the same `import onnxruntime` as onnxruntime-gpu.
SAME_MODULE = {"onnxruntime-gpu": "onnxruntime"}
# There, but pydantic 2.14 needs typing-extensions >= 4.16, newer than the image may hold.
ALWAYS_CARRY = ("typing-extensions",)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_dependencies() -> list[str]:
    """Requirement names of ``[project] dependencies`` in pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if block is None:
        raise SystemExit("error: pyproject.toml has no [project] dependencies list")
    specs = re.findall(r'"([^"]+)"', block.group(1))
    return [normalise(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in specs]


def _requirements(name: str, python_version: str) -> list[str]:
    """What the installed distribution ``name`` requires on the target Python (no extras)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors it
        from pip._vendor.packaging.requirements import Requirement
    env = {"python_version": python_version, "python_full_version": python_version + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "os_name": "posix", "extra": ""}
    out = []
    for line in md.requires(name) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(normalise(req.name))
    return out


def wheels_to_carry(python_version: str = DEVICE_PYTHON,
                    skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{distribution: version installed here}`` of everything to carry, leaving out the
    dependencies in ``skip`` (and what only they need)."""
    todo = [d for d in project_dependencies()
            if SAME_MODULE.get(d, d) not in DEVICE_PACKAGES and d not in skip
            ] + list(ALWAYS_CARRY)
    chosen: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        try:
            chosen[name] = md.version(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"error: {name} is needed on the device but not installed here; "
                             "install it (pip install -e .) and rerun") from None
        todo += [r for r in _requirements(name, python_version)
                 if (r not in DEVICE_PACKAGES or r in ALWAYS_CARRY) and r not in chosen]
    return dict(sorted(chosen.items()))


def download(wanted: dict[str, str], dest: Path, this_python: bool) -> list[Path]:
    """``pip download`` one wheel per distribution into a fresh ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "-d", str(dest)]
    if not this_python:
        cmd += ["--python-version", DEVICE_PYTHON, "--implementation", "cp"]
        for platform in DEVICE_PLATFORMS:
            cmd += ["--platform", platform]
    cmd += [f"{name}=={version}" for name, version in wanted.items()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: pip download failed: {tail}")
    wheels = sorted(dest.glob("*.whl"))
    got = {normalise(w.name.split("-")[0]) for w in wheels}
    missing = sorted(set(wanted) - got)
    if missing:
        raise SystemExit(f"error: no wheel downloaded for {', '.join(missing)}")
    return wheels


def copy_data(source: Path, dest: Path) -> None:
    if not (source / "images").is_dir() or not (source / "labels.csv").is_file():
        raise SystemExit(f"error: {source} has no images/ and labels.csv (UC Merced, see its "
                         "README); give --data DIR or --no-data")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carry", type=Path, default=CARRY,
                        help="the git-ignored folder to fill (default .gpu-carry)")
    parser.add_argument("--wheels", type=Path, help="wheel folder (default CARRY/wheels)")
    parser.add_argument("--data", type=Path, default=UCM, help="UC Merced folder to copy")
    parser.add_argument("--no-data", action="store_true", help="do not copy the data")
    parser.add_argument("--this-python", action="store_true",
                        help="wheels for this interpreter and platform instead of the device")
    parser.add_argument("--list", action="store_true", help="only print what would be carried")
    parser.add_argument("--skip", default="",
                        help="comma-separated dependencies not to carry (e.g. one that alft "
                             "imports only for inputs the check does not use), to stay "
                             "under 64 MiB")
    args = parser.parse_args()

    python_version = (f"{sys.version_info.major}.{sys.version_info.minor}" if args.this_python
                      else DEVICE_PYTHON)
    skip = frozenset(normalise(n) for n in args.skip.split(",") if n.strip())
    wanted = wheels_to_carry(python_version, skip)
    print("wheels to carry: " + ", ".join(f"{k}=={v}" for k, v in wanted.items()))
    if args.list:
        return
    wheels = download(wanted, args.wheels or args.carry / "wheels", args.this_python)
    print(f"downloaded {len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:.1f}"
          f" MiB, to {wheels[0].parent}")
    if not args.no_data:
        copy_data(args.data, args.carry / "ucmerced-ml")
        print(f"copied {args.data} to {args.carry / 'ucmerced-ml'}")
    if args.wheels is None or args.wheels.resolve().is_relative_to(args.carry.resolve()):
        from gpu_travel_size import check

        sys.exit(check([args.carry]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
