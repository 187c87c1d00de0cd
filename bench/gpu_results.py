"""What the GPU check records (bench/gpu_check.py): results.json and summary.md rewritten
after every figure, the deadline clock, and a timestamped reporter for the log."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Results:
    """results.json + summary.md in ``out``, rewritten after every figure."""

    def __init__(self, out: Path, started_at: float, deadline_at: float,
                 argv: list[str]) -> None:
        self.out = out
        self.started_at = started_at
        self.deadline_at = deadline_at
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "what": "alft GPU check (bench/gpu_check.sh, issue 19)",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started_at)),
            "deadline_s": round(deadline_at - started_at, 1), "argv": argv,
            "stages": {}, "env": {}, "paper": {}, "throughput": {}}

    def set(self, section: str, key: str, value: Any) -> None:
        with self.lock:
            self.data[section][key] = value
        self.write()

    def stage(self, name: str, state: str, **extra: Any) -> None:
        with self.lock:
            self.data["stages"][name] = {"state": state,
                                         "at_s": round(time.time() - self.started_at, 1),
                                         **extra}
        self.write()

    def write(self) -> None:
        # The files too under the lock: the watchdog thread writes them as well, through the
        # same temp names.
        with self.lock:
            self.data["elapsed_s"] = round(time.time() - self.started_at, 1)
            text = json.dumps(self.data, indent=2, default=str)
            _atomic_write(self.out / "results.json", text + "\n")
            _atomic_write(self.out / "summary.md", summary_markdown(self.data))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Clock:
    """Wall-clock deadline shared by every stage."""

    def __init__(self, deadline_at: float) -> None:
        self.deadline_at = deadline_at

    def left(self) -> float:
        return self.deadline_at - time.time()

    def monotonic_at(self, seconds_from_now: float) -> float:
        return time.monotonic() + seconds_from_now


# ------------------------------------------------------------------------------- reporting
class LogReporter:
    """alft's reporter for the log: timestamped messages, progress every ~15 s, task ends."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.messages: list[tuple[str, str]] = []

    def _print(self, text: str) -> None:
        print(f"[{time.time() - self.started_at:7.1f}s] {text}", flush=True)

    def info(self, message: str) -> None:
        self.messages.append(("info", message))
        self._print(message)

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))
        self._print(f"warning: {message}")

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Any]:
        from alft_cli.progress import Task

        reporter = self

        class LoggedTask(Task):
            last = time.perf_counter()

            def advance(self, n: int = 1, **fields: Any) -> None:
                super().advance(n, **fields)
                if time.perf_counter() - self.last > 15:
                    self.last = time.perf_counter()
                    reporter._print(f"  {self.description}: {self.completed}/{self.total} "
                                    f"{_fields(self.fields)}")

        task = LoggedTask(total, description)
        try:
            yield task
        finally:
            seconds = time.perf_counter() - task.started
            reporter._print(f"  {task.description}: {task.completed}/{task.total} in "
                            f"{seconds:.1f}s {_fields(task.fields)}")


def _fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in fields.items())


def log(started_at: float, text: str) -> None:
    print(f"[{time.time() - started_at:7.1f}s] == {text}", flush=True)


# ---------------------------------------------------------------------------------- summary
def summary_markdown(d: dict[str, Any]) -> str:
    """The human-readable account (what goes into docs/RESULTS.md and bench/RESULTS.md)."""
    lines = [f"# alft GPU check, {d['started']}", "",
             f"Deadline {d['deadline_s']} s; elapsed {d.get('elapsed_s', 0)} s.", "",
             "| stage | state | at s | note |", "|---|---|---:|---|"]
    for name, s in d["stages"].items():
        lines.append(f"| {name} | {s['state']} | {s['at_s']} | {s.get('note', '')} |")
    env = d["env"]
    if env:
        basics, dev = env.get("basics", {}), env.get("device", {})
        pk = basics.get("packages", {})
        lines += ["", "## Machine", "",
                  f"- {dev.get('gpu', dev.get('device', '?'))}"
                  + (f", capability {dev.get('capability')}, {dev.get('gpu_memory_gib')} GiB"
                     if "gpu" in dev else "")
                  + f"; {basics.get('cpus')} CPUs; Python {basics.get('python')}",
                  f"- torch {pk.get('torch')} (CUDA {dev.get('torch_cuda')}, cuDNN "
                  f"{dev.get('cudnn')}), torchvision {pk.get('torchvision')}, numpy "
                  f"{pk.get('numpy')}, onnxruntime {pk.get('onnxruntime')} "
                  f"{dev.get('onnxruntime_providers', '')}",
                  f"- pydantic {pk.get('pydantic')}, typer {pk.get('typer')}, scikit-learn "
                  f"{pk.get('sklearn')}, matplotlib {pk.get('matplotlib')}; alft imports: "
                  f"{basics.get('alft_imports')}; carried wheels: "
                  f"{basics.get('carried_wheels') or 'none'}"]
        if "matmul" in env:
            m = env["matmul"]
            lines.append(f"- matmul {m['n']}^3 {m['dtype']}: {m['tflop_s']} TFLOP/s")
    p = d["paper"]
    if p:
        lines += ["", "## Paper configuration (what fitted)", ""]
        if "index" in p:
            i = p["index"]
            lines.append(f"- index: {i['archive']}, {i['images']} images at "
                         f"{i['image_size']} px in {i['seconds']} s")
        if "byol" in p:
            b = p["byol"]
            lines.append(f"- BYOL {b['backbone']}, batch {b['batch_size']}: "
                         f"{b.get('epochs_done', '?')} epochs (planned "
                         f"{b.get('epochs_planned', '?')}) in {b.get('seconds_total', '?')} s, "
                         f"loop {b.get('loop_img_s', '?')} img/s, first epoch "
                         f"{b['first_epoch_s']} s, final loss {b.get('final_loss', '?')}")
        if "al_plan" in p:
            a = p["al_plan"]
            lines.append(f"- AL: seed 0, {', '.join(a['strategies'])}, {a['initial']} + "
                         f"{a['budget']}/round up to {a['max_labels']} labels (asked "
                         f"{a['max_labels_asked']}), fine-tuning {a['finetune']}; estimated "
                         f"{a['seconds_estimated']} s of {a['seconds_available']} s")
        if p.get("al", {}).get("rounds"):
            al = p["al"]
            lines += [f"- simulate: complete={al['complete']} in {al['seconds']} s", "",
                      "| strategy | labels | test micro-F1 | test macro-F1 | test mAP |",
                      "|---|---:|---:|---:|---:|"]
            for r in al["rounds"]:
                lines.append(f"| {r['strategy']} | {r['labeled']} | "
                             f"{r.get('test_micro_f1', '')} | {r.get('test_macro_f1', '')} | "
                             f"{r.get('test_mAP', '')} |")
    t = d["throughput"]
    if t:
        lines += ["", "## Throughput (loop ÷ model-only)", "",
                  "| what | loop | model only | ratio |", "|---|---:|---:|---:|"]
        if isinstance(t.get("byol"), dict):
            b = t["byol"]
            lines.append(f"| BYOL img/s (batch {b['batch']}) | {b['loop_img_s']} | "
                         f"{b['model_only_img_s']} | {b['ratio_loop_over_model']} |")
        if isinstance(t.get("finetune"), dict):
            f = t["finetune"]
            lines.append(f"| fine-tune ms/step (batch {f['batch']}, {f['labels']} labels) | "
                         f"{f['loop_ms_per_step']} | {f['model_only_ms_per_step']} | "
                         f"{f['ratio_loop_over_model']} (model ÷ loop) |")
        if isinstance(t.get("scoring"), dict):
            s = t["scoring"]
            lines.append(f"| scoring img/s (batch {s['batch']}, {s['images']} images) | "
                         f"{s['loop_img_s']} | {s['model_only_img_s']} | "
                         f"{s['ratio_loop_over_model']} |")
        if isinstance(t.get("query"), dict):
            q = t["query"]
            lines.append(f"| alft query s vs its pass ({q['unlabeled']} images) | "
                         f"{q['query_s']} | {q['inference_s']} | "
                         f"{q['ratio_query_over_inference']} (query ÷ pass) |")
        if isinstance(t.get("tag"), dict):
            g = t["tag"]
            lines.append(f"| alft tag img/s ({g['provider']}, {g['threads']} threads) vs "
                         f"torch CPU | {g['tag_img_s']} | {g['torch_cpu_model_only_img_s']} | "
                         f"{g['ratio_tag_over_torch_cpu']} |")
        for key, value in t.items():
            if isinstance(value, str):
                lines.append(f"| {key} | {value} | | |")
    errors = [(n, s) for n, s in d["stages"].items() if s.get("error")]
    for name, s in errors:
        lines += ["", f"## Error in {name}", "", "```", s["error"].rstrip(), "```"]
    return "\n".join(lines) + "\n"
