"""Labeling launches that share one output: overlapping launches and a SIGKILLed one give exactly
one uninterrupted run's keys; claims of other hosts (expired: taken over; live: left alone);
SIGTERM; a full disk; streamed WebDataset URLs (pipe:); the status command."""
import glob
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from distill.data.shards import ShardReader
from distill.runtime import owner_id
from pseudolabel.claims import CLAIMS_DIR, Claims, read_claim
from pseudolabel.cli import main as cli_main
from pseudolabel.job import run
from test_pseudolabel import SCRIPT, config, corpus, one_torch_thread, shard_keys, teacher  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def want(teacher, corpus, tmp_path_factory):  # noqa: F811
    """The keys of one uninterrupted in-process run."""
    out = tmp_path_factory.mktemp("reference")
    assert run(config(teacher, corpus, out))["labeled"] == 24
    return sorted(shard_keys(out))


def launch(teacher, corpus, out, *extra):  # noqa: F811
    cmd = [sys.executable, str(SCRIPT), "--teacher", str(teacher), "--input", str(corpus), "--output", str(out),
           "--shard-size", "1", "--claim-units", "1", "--batch-size", "1", "--workers", "0", "--no-progress", *extra]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, what, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.005)


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until the kernel reports ``pid`` stopped (state T in /proc/PID/stat)."""
    deadline = time.time() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.time() < deadline, f"process {pid} did not stop in {timeout} s"
        time.sleep(0.001)


def writers(out) -> list[str]:
    return [json.loads(Path(p).read_text())["written_by"] for p in sorted(glob.glob(str(Path(out) / "index" / "*.json")))]


def leftovers(out) -> list[str]:
    """Temporary files and claims: a finished job leaves none of its own."""
    return glob.glob(str(Path(out) / "**" / "*.tmp*"), recursive=True) + glob.glob(str(Path(out) / CLAIMS_DIR / "*"))


def of_pid(owner: str, pid: int) -> bool:
    return f"-{pid}-" in owner


def test_overlapping_launches_and_a_sigkilled_one_give_one_runs_keys(teacher, corpus, want, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    first = launch(teacher, corpus, out)
    try:
        wait_for(lambda: len(glob.glob(str(out / "index" / "*.json"))) >= 2, first, "two committed units")
        # freeze the first launch while it holds a claim (between two units it briefly holds none)
        for _ in range(200):
            first.send_signal(signal.SIGSTOP)
            wait_stopped(first.pid)  # SIGSTOP lands asynchronously: read the claims only once it cannot release one
            held = [c for c in (read_claim(p) for p in glob.glob(str(out / CLAIMS_DIR / "*.claim"))) if c]
            if any(of_pid(c["owner"], first.pid) for c in held):
                break
            first.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        else:
            pytest.fail("the first launch was never seen holding a claim")
        assert not (out / "manifest.json").exists()

        # a second launch on the same output: it labels every free unit, then leaves the frozen one's
        second = launch(teacher, corpus, out)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err[-2000:]
        assert "nothing left to claim" in err and f"-{first.pid}-" in err  # names the holder
        assert not (out / "manifest.json").exists()
        by = writers(out)
        assert any(of_pid(w, first.pid) for w in by) and any(of_pid(w, second.pid) for w in by)
    finally:
        first.kill()  # -9, frozen in the middle of a unit: its claim and temporary file stay behind
        first.wait()
    assert first.returncode == -signal.SIGKILL

    # the requeued launch takes the dead process's claim over at once (same host, pid gone)
    third = launch(teacher, corpus, out)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labeled"] == 24 and len(manifest["shards"]) == 24
    assert sorted(shard_keys(out)) == want  # every key once: nothing lost, nothing duplicated
    assert any(of_pid(w, third.pid) for w in writers(out))
    assert leftovers(out) == []
    assert len(ShardReader(str(out))) == 24


def put_claim(out: Path, unit: int, owner: str, expiry_s: float, age_s: float) -> Path:
    path = out / CLAIMS_DIR / f"shard-{unit:06d}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    since = time.time() - age_s
    path.write_text(json.dumps({"owner": owner, "since": since, "expiry_s": expiry_s}))
    os.utime(path, (since, since))
    return path


def test_claims_of_another_host_expired_taken_over_live_left_alone(teacher, corpus, want, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    put_claim(out, 0, "elsewhere-77-0a0b0c0d", expiry_s=10, age_s=60)  # not renewed for 60 s: expired
    live = put_claim(out, 1, "elsewhere-78-0a0b0c0d", expiry_s=600, age_s=1)
    fresh_tmp = out / "shard-000002.tar.tmp.elsewhere-78-0a0b0c0d"  # may still be written to
    old_tmp = out / "shard-000003.tar.tmp.elsewhere-79-0a0b0c0d"  # 7 h old: abandoned
    fresh_tmp.write_bytes(b"x")
    old_tmp.write_bytes(b"x")
    os.utime(old_tmp, (time.time() - 7 * 3600,) * 2)

    logs = []
    assert run(config(teacher, corpus, out, "shard_size=4"), log=logs.append) is None  # unit 1 is not ours
    assert "elsewhere-78-0a0b0c0d: shard-000001" in logs[-1]
    assert (out / "index" / "shard-000000.json").exists() and not (out / "index" / "shard-000001.json").exists()
    assert fresh_tmp.exists() and not old_tmp.exists()

    assert cli_main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "6 units: 5 done, 1 claimed, 0 pending" in status
    assert "shard-000001: claimed by elsewhere-78-0a0b0c0d" in status and "4 inputs to do" in status

    os.utime(live, (time.time() - 700,) * 2)  # its owner stopped renewing
    manifest = run(config(teacher, corpus, out, "shard_size=4"))
    assert manifest is not None and manifest["labeled"] == 24
    assert sorted(shard_keys(out)) == want
    assert not (out / CLAIMS_DIR / "shard-000001.claim").exists()


def test_one_process_of_all_launches_lists_a_new_job(teacher, corpus, want, tmp_path, capsys):  # noqa: F811
    """Launches started together on a new output (a SLURM array) wait while another one lists; a
    lister that stops renewing its claim is replaced."""
    out = tmp_path / "out"
    claim = out / CLAIMS_DIR / "listing.claim"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"owner": "elsewhere-81-0a0b0c0d", "since": time.time(), "expiry_s": 4}))
    assert cli_main(["status", str(out)]) == 0
    assert "the inputs are being listed by elsewhere-81-0a0b0c0d" in capsys.readouterr().out
    start = time.time()
    manifest = run(config(teacher, corpus, out, "claim_expiry_s=4"))
    assert time.time() - start > 3.5  # it waited for the other lister's claim to expire
    assert manifest["labeled"] == 24 and sorted(shard_keys(out)) == want
    assert leftovers(out) == []


def test_a_claim_renewed_while_being_taken_over_goes_back_to_its_owner(tmp_path):
    out = tmp_path / "out"
    path = put_claim(out, 0, "elsewhere-80-0a0b0c0d", expiry_s=10, age_s=60)
    judged_stale = read_claim(str(path))
    os.utime(path)  # renewed after this process judged it stale
    claims = Claims(str(out), expiry_s=10)
    try:
        assert claims._take_over(str(path), judged_stale) is False
        assert read_claim(str(path))["owner"] == "elsewhere-80-0a0b0c0d"
        assert os.listdir(out / CLAIMS_DIR) == ["shard-000000.claim"]
        assert claims.acquire(1) and read_claim(str(out / CLAIMS_DIR / "shard-000001.claim"))["owner"] == owner_id()
    finally:
        claims.close()
    assert os.listdir(out / CLAIMS_DIR) == ["shard-000000.claim"]  # close released its own claim only


def test_sigterm_stops_cleanly_and_the_rerun_resumes(teacher, corpus, want, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    proc = launch(teacher, corpus, out)
    wait_for(lambda: glob.glob(str(out / "index" / "*.json")), proc, "a committed unit")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pseudolabel.py: stopped by SIGTERM after ") and "rerun the same command" in last
    assert "Traceback" not in err
    assert leftovers(out) == [] and not (out / "manifest.json").exists()
    manifest = run(config(teacher, corpus, out, "shard_size=1"))
    assert manifest["labeled"] == 24 and sorted(shard_keys(out)) == want


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_gives_one_line_and_the_rerun_completes(teacher, corpus, want, small_disk, capsys):  # noqa: F811
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 160 * 1024))  # about 160 KiB left: a few units fit
    out = small_disk / "out"
    argv = ["--teacher", str(teacher), "--input", str(corpus), "--output", str(out), "--shard-size", "2",
            "--batch-size", "2", "--workers", "0", "--no-progress"]
    assert cli_main(argv) == 74
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1, err
    assert err[0].startswith(f"pseudolabel.py: error: cannot write {out}{os.sep}") and "No space left on device" in err[0]
    assert " free of 1.0 MiB on " in err[0] and "rerun the same command" in err[0]
    committed = glob.glob(str(out / "index" / "*.json"))
    assert 0 < len(committed) < 12 and not (out / "manifest.json").exists()
    assert leftovers(out) == []  # nothing half-written stays, nothing half-written counts as done

    filler.unlink()
    assert cli_main(argv) == 0
    assert sorted(shard_keys(out)) == want


def test_streamed_webdataset_urls_one_unit_per_tar(teacher, corpus, tmp_path, capsys):  # noqa: F811
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".jpg", ".png"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for t in range(2):
        with tarfile.open(shards / f"in-{t:03d}.tar", "w") as tf:
            members = [(f"s{t}_{i}.{p.suffix[1:]}", p.read_bytes()) for i, p in enumerate(files[t * 5:(t + 1) * 5])]
            members += [(f"s{t}_{i}.cls", b"3") for i in range(5)] + [("noimage.json", b"{}")]
            for name, data in sorted(members, key=lambda m: m[0].split(".")[0]):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    manifest = run(config(teacher, f"pipe:cat {shards}/in-{{000..001}}.tar", out))
    assert manifest["input_kind"] == "urls" and manifest["units"] == 2  # one unit per tar, whatever shard_size
    assert (manifest["labeled"], manifest["skipped"], manifest["inputs"]) == (10, 2, 12)
    reasons = (out / "errors.jsonl").read_text()
    assert reasons.count("no image member") == 2
    samples = [ShardReader(str(out))[i] for i in range(10)]
    assert {s.meta["source"] for s in samples} == {f"pipe:cat {shards}/in-{t:03d}.tar:s{t}_{i}"
                                                   for t in range(2) for i in range(5)}

    # a list of URLs; one of them fails: its unit is done with one error, the others are labeled
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# corpus\nfile://{shards}/in-000.tar\npipe:cat {tmp_path}/missing.tar\n")
    manifest = run(config(teacher, urls, tmp_path / "list", "input_type=urls"))
    assert (manifest["units"], manifest["labeled"]) == (2, 5)
    assert "stream broke off after 0 samples" in (tmp_path / "list" / "errors.jsonl").read_text()

    assert cli_main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "2 units: 2 done, 0 claimed, 0 pending (complete" in status and "inputs to do unknown" in status
