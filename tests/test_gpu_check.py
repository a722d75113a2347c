"""benchmarks/gpu_check.py: the smoke mode end to end (every part reports), the runner's isolation
(an exception, a crash and a hang of one part are recorded and the next part runs), and its imports."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PART_NAMES = ["environment", "teacher_step", "student_step", "labeling", "compile", "distributed", "nccl"]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


@pytest.mark.slow
def test_smoke_run_reports_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--output", str(out), "--work-dir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = {p["name"]: p for p in report["parts"]}
    assert [p["id"] for p in report["parts"]] == list(range(1, 8))
    assert [p["name"] for p in report["parts"]] == PART_NAMES
    for name, part in parts.items():
        if name in ("distributed", "nccl") and part["status"] == "skipped":
            assert part["reason"].strip(), name
        else:
            assert part["status"] == "ok", (name, part.get("error"), part.get("log_tail"))
        assert finite(part["seconds"])
    assert report["mode"] == "smoke" and report["photos"]["source"] and report["photos"]["count"] > 0
    assert (tmp_path / "gpu_check_logs" / "2_teacher_step.log").is_file()

    env = parts["environment"]["results"]
    assert env["torch"] and env["packages"]["transformers"] and env["optional"]["albumentations"]["importable"] is True
    assert set(env["sdpa"]) >= {"flash_attention", "math"} and env["sdpa"]["math"] is True
    assert env["attention"]["backbone"]

    teacher = parts["teacher_step"]["results"]["rows"]
    assert [r["gradient_checkpointing"] for r in teacher] == [False, True]
    for row in teacher:
        assert row["preset"] == "tiny" and "error" not in row
        for key in ("engine_samples_per_s", "bare_samples_per_s", "engine_vs_bare", "overhead", "engine_peak_mib", "bare_peak_mib"):
            assert finite(row[key]) and (row[key] > 0 or key == "overhead"), (key, row)
        assert math.isclose(row["engine_vs_bare"], row["engine_samples_per_s"] / row["bare_samples_per_s"])

    student = parts["student_step"]["results"]
    assert student["shards"]["images"] == 12 and student["shards"]["tta"] == "flip"
    (row,) = student["rows"]
    for key in ("engine_samples_per_s", "bare_samples_per_s", "engine_vs_bare", "overhead", "final_loss"):
        assert finite(row[key]), (key, row)
    assert row["final_loss"] > 0  # the student learns something (no all-masked pseudo-labels)

    labeling = parts["labeling"]["results"]
    assert labeling["images"] == 12 and labeling["photos"] == report["photos"]["source"]
    assert finite(labeling["cpu_ceiling"]["cpu_ceiling_images_per_s"])
    (row,) = labeling["rows"]
    assert row["labeled"] == 12 and row["skipped"] == 0 and not row.get("errors")
    for key in ("job_images_per_s", "bare_images_per_s", "pipeline_images_per_s", "job_vs_bare", "job_vs_pipeline",
                "job_vs_cpu_ceiling", "job_peak_mib"):
        assert finite(row[key]) and row[key] > 0, (key, row)

    compiled = parts["compile"]["results"]
    assert compiled["backend"] == "eager"
    assert finite(compiled["teacher"]["speedup"]) and compiled["teacher"]["eager_from"].startswith("part 2")
    assert finite(compiled["labeling"]["speedup_cold"]) and finite(compiled["labeling"]["speedup_warm"])

    runs = parts["distributed"]["results"]["runs"]
    assert set(runs) == {"fsdp", "zero2"}
    assert runs["fsdp"]["status"] == "skipped" and "only on GPUs" in runs["fsdp"]["reason"]
    assert runs["zero2"]["status"] == "skipped" and runs["zero2"]["reason"]
    assert "GPU" in parts["nccl"]["reason"]

    assert set(report["goals"]) == {"labeling_vitl_job_vs_bare", "teacher_engine_overhead", "student_engine_overhead",
                                    "nothing_crashes"}
    assert report["goals"]["nothing_crashes"]["met"] is True
    assert finite(report["goals"]["teacher_engine_overhead"]["value"])
    for name in PART_NAMES:  # the printed table
        assert name in proc.stdout
    print(f"smoke run: {wall:.0f} s")


def test_a_failing_crashing_or_hanging_part_is_recorded_and_the_next_runs(gpu_check, tmp_path, monkeypatch):
    def raises(ctx):
        ctx.results["before"] = 1
        raise ValueError("broken part\nsecond line")

    def measures_then_fails(ctx):
        ctx.row("good", lambda: {"x": 1.0})
        ctx.row("bad", lambda: 1 / 0)

    def segfaults(ctx):
        ctx.row("first", lambda: {"y": 2.0})
        os.kill(os.getpid(), signal.SIGSEGV)

    def hangs(ctx):
        time.sleep(60)

    def skips(ctx):
        raise gpu_check.Skip("not here")

    fakes = {"raises": raises, "partial": measures_then_fails, "segfaults": segfaults, "hangs": hangs, "skips": skips}
    for name, fn in fakes.items():
        monkeypatch.setitem(gpu_check.BY_NAME, name, gpu_check.Part(9, name, fn, name))
    ctx = {"work": str(tmp_path / "work"), "logs": str(tmp_path / "logs"), "smoke": True, "settings": {}, "photos": {},
           "prior": {}, "flags": {}}
    results = {name: gpu_check.run_isolated(gpu_check.BY_NAME[name], ctx, str(tmp_path), 3 if name == "hangs" else 60, "fork")
               for name in fakes}

    assert results["raises"]["status"] == "error" and results["raises"]["error"] == "ValueError: broken part"
    assert results["raises"]["results"] == {"before": 1}
    assert any("ValueError: broken part" in line for line in results["raises"]["traceback"])
    assert results["partial"]["status"] == "error" and "bad: ZeroDivisionError" in results["partial"]["error"]
    assert results["partial"]["results"]["rows"][0] == {"x": 1.0}
    assert results["segfaults"]["status"] == "error" and "SIGSEGV" in results["segfaults"]["error"]
    assert results["segfaults"]["results"]["rows"] == [{"y": 2.0}]  # saved before the crash
    assert results["hangs"]["status"] == "error" and "timed out after 3 s" in results["hangs"]["error"]
    assert results["skips"] == {**results["skips"], "status": "skipped", "reason": "not here"}
    assert all(os.path.isfile(r["log"]) for r in results.values())


def test_subprocess_isolation_and_a_part_that_skips(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--parts", "nccl", "--isolation", "subprocess", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    (part,) = report["parts"]
    assert report["isolation"] == "subprocess" and part["name"] == "nccl"
    import torch

    if torch.cuda.device_count() < 2:
        assert part["status"] == "skipped" and "needs at least 2" in part["reason"]
    else:
        assert part["status"] == "ok"


def test_bad_part_name_is_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--parts", "8"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown part '8'" in proc.stderr


def test_imports_nothing_heavy_or_optional_at_module_level():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import gpu_check; "
            "print(sorted({'torch', 'transformers', 'datasets', 'webdataset', 'albumentations', 'deepspeed'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPT.parent)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
