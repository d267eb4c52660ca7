"""The job-folder contract (DESIGN.md, analyses/jobdir.py): a job's --out folder records which job,
models (weight hashes) and settings made it; another job or another run is refused before any model
loads (or replaced with --overwrite); the same run resumes; one writer at a time (a lock that a dead
owner does not keep); a full disk or a read-only folder ends in a TwinlensError that says what was
kept and how to resume."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from analyses.jobdir import JOB_FILE, claim_folder, job_identity, read_job_record
from analyses.reporting import write_results
from hooks import TwinlensError, capture, load_model
from hooks.locking import LOCK_NAME, FolderLock, lock_owner, pid_alive

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_jobdir_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in a script look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def passk():
    return load_script("passk")


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """tiny_models plus 'llama_c': a third llama with other weights and the same tokenizer."""
    from tests.conftest import make_tiny_model

    return {**tiny_models, "llama_c": make_tiny_model(tmp_path_factory.mktemp("m") / "llama_c", "llama", seed=2)}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails loudly: a test that passes with it proves the check came first."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def passk_argv(tiny_models, out, *extra, rl="llama_b"):
    return ["--base", str(tiny_models["llama"]), "--rl", str(tiny_models[rl]), "--difficulty", "3",
            "--n-problems", "3", "--n-samples", "2", "--max-new-tokens", "6", "--n-boot", "20",
            "--batch-size", "2", "--out", str(out), *extra]


def sample_keys(path: Path) -> list[tuple]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["model"], r["problem_id"], r["sample_index"]) for r in rows]


# ----------------------------------------------------------------------------- identity
def test_another_jobs_folder_is_refused_before_any_model_loads(passk, tiny_models, tmp_path, capsys,
                                                               monkeypatch):
    out = tmp_path / "cap"
    capture_script = load_script("capture")
    assert capture_script.main(["--model", str(tiny_models["llama"]), "--prompts", str(_prompts(tmp_path)),
                                "--n", "2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert read_job_record(out)["job"] == "capture"

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("passk loaded a model into capture's folder"))
    assert passk.main(passk_argv(tiny_models, out)) == 2
    err = capsys.readouterr().err
    assert "outputs of job 'capture'" in err and "'passk'" in err and "--overwrite" in err and "another --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # capture's results intact


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("1+2+3:\n4+5+6:\n")
    return path


def test_same_run_resumes_other_models_are_refused_and_overwrite_replaces(passk, models, tmp_path, capsys):
    out = tmp_path / "pk"
    assert passk.main(passk_argv(models, out)) == 0
    first = sample_keys(out / "samples.jsonl")
    assert len(first) == 2 * 3 * 2 and read_job_record(out)["complete"] is True

    # The same job, models and settings (batch size and threads may differ): accepted, nothing redrawn.
    assert passk.main(passk_argv(models, out, "--batch-size", "4", "--threads", "1")) == 0
    assert sample_keys(out / "samples.jsonl") == first
    assert read_job_record(out)["runs"] == 2
    capsys.readouterr()

    # Another RL model: refused, naming both sides (by weight hash) and the fixes; nothing changed.
    llama_b_hash = read_job_record(out)["models"]["rl"][0]["weight_hash"]
    assert passk.main(passk_argv(models, out, rl="llama_c")) == 2
    err = capsys.readouterr().err
    assert "--rl:" in err and str(models["llama_b"]) in err and str(models["llama_c"]) in err
    assert llama_b_hash[:12] in err and "--overwrite" in err
    assert sample_keys(out / "samples.jsonl") == first

    # Another setting: refused too.
    assert passk.main(passk_argv(models, out, "--temperature", "1.0")) == 2
    assert "--temperature: 0.6 here, 1.0 asked" in capsys.readouterr().err

    # --overwrite: the old run's outputs are deleted first, so no llama_b row survives.
    assert passk.main(passk_argv(models, out, "--overwrite", rl="llama_c")) == 0
    assert "deleted the earlier outputs" in capsys.readouterr().err
    keys = sample_keys(out / "samples.jsonl")
    assert {k[0] for k in keys} == {"base", "llama_c"} and len(keys) == len(first)
    rec = read_job_record(out)
    assert rec["models"]["rl"][0]["spec"] == str(models["llama_c"]) and rec["runs"] == 1


def test_an_edited_problems_file_is_another_setting(tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"prompt": "1+1:", "answer": "2"}\n')
    ns = {"problems": str(problems), "out": str(tmp_path / "o"), "threads": 1}
    with claim_folder(tmp_path / "o", job_identity("passk", ns)) as folder:
        folder.finish()
    problems.write_text('{"prompt": "1+1:", "answer": "3"}\n')
    with pytest.raises(TwinlensError, match=r"--problems: file .*p.jsonl changed"):
        with claim_folder(tmp_path / "o", job_identity("passk", ns)):
            pass


def test_same_weights_under_another_name_are_the_same_model(tiny_models, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_models["llama"], tmp_path / "copy")
    with claim_folder(tmp_path / "o", job_identity("x", {"base": str(tiny_models["llama"])})) as f:
        f.finish()
    with claim_folder(tmp_path / "o", job_identity("x", {"base": str(copy)})) as f:
        assert f.resumed
    with pytest.raises(TwinlensError, match="--base"):
        with claim_folder(tmp_path / "o", job_identity("x", {"base": str(tiny_models["llama_b"])})):
            pass


def test_a_failed_first_run_does_not_pin_its_settings(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with claim_folder(out, job_identity("x", {"n": 1})):
            raise RuntimeError("model failed to load")
    assert not out.exists()  # created by the claim, left empty: removed
    with claim_folder(out, job_identity("x", {"n": 2})) as f:  # a corrected rerun is accepted
        f.finish()
    assert read_job_record(out)["settings"] == {"n": 2}


def test_a_folder_of_other_files_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(TwinlensError, match=r"holds files \(thesis.tex\) but no job.json"):
            with claim_folder(out, job_identity("passk", {}), overwrite=overwrite):
                pass
    assert (out / "thesis.tex").read_text() == "precious"
    # An output folder of the version before job.json (it holds results.json): replaced on --overwrite only.
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text("{}")
    with pytest.raises(TwinlensError, match="--overwrite"):
        with claim_folder(old, job_identity("passk", {})):
            pass
    with claim_folder(old, job_identity("passk", {}), overwrite=True) as f:
        assert f.replaced == ["results.json"]
    assert not (old / "results.json").exists() and (old / JOB_FILE).exists()


# ----------------------------------------------------------------------------- writability
@pytest.mark.parametrize("script", ["evaluate", "capture", "probe", "steer", "diff", "route", "passk", "drift",
                                    "calibrate", "formats", "scaling", "mi_peaks", "mechanism"])
def test_every_job_refuses_an_out_that_is_a_file_before_loading(script, tmp_path, capsys, no_model_loads):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert load_script(script).main(["--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target} is a file, not a folder" in err
    assert target.read_text() == "not a folder"


def test_train_organism_refuses_an_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "checkpoints"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        load_script("train_organism").main(["--out", str(target), "--quick"])
    assert exc.value.code == 2 and f"{target} is a file, not a folder" in capsys.readouterr().err


def test_unwritable_out_is_refused_naming_the_path(passk, tiny_models, tmp_path, capsys, no_model_loads,
                                                   monkeypatch):
    # /sys refuses new folders even for root: a real unwritable place.
    assert passk.main(passk_argv(tiny_models, "/sys/twinlens-test-out")) == 2
    assert "/sys/twinlens-test-out cannot be created" in capsys.readouterr().err
    # An existing read-only folder (root ignores chmod, so the filesystem's answer is simulated).
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    assert passk.main(passk_argv(tiny_models, ro)) == 2
    err = capsys.readouterr().err
    assert f"{ro}" in err and "Read-only file system" in err and "give another output folder" in err


# ----------------------------------------------------------------------------- one writer
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from hooks.locking import FolderLock
    lock = FolderLock(sys.argv[1], what=sys.argv[2]).acquire()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def _hold_lock(folder: Path, what: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), what], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_dead_owners_lock_is_taken_over(passk, tiny_models, tmp_path, capsys,
                                                                         no_model_loads):
    out = tmp_path / "pk"
    holder = _hold_lock(out, "passk")
    try:
        assert lock_owner(out)["pid"] == holder.pid
        assert passk.main(passk_argv(tiny_models, out)) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {holder.pid}" in err and "(passk, since" in err and "only one writer" in err
        with pytest.raises(TwinlensError, match="in use by"):  # the results writer checks it too
            write_results(out, {"x": 1}, "x")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # a SIGKILLed owner leaves its file behind ...
    assert lock_owner(out) is None and not pid_alive(holder.pid)
    with FolderLock(out, "test"):  # ... which is stale: taken over at once
        assert lock_owner(out)["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow  # two script processes at once: ~45 s on a busy 2-core box
def test_two_passk_runs_on_one_out_never_both_write(tiny_models, tmp_path):
    out = tmp_path / "pk"
    cmd = [sys.executable, str(ROOT / "scripts" / "passk.py"), *passk_argv(tiny_models, out)]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    keys = sample_keys(out / "samples.jsonl")
    assert len(keys) == len(set(keys)) == 2 * 3 * 2  # every row once
    # Either the second start found the folder locked (2), or it started after the first finished and
    # resumed with nothing left to draw (0); never two writers at once.
    assert codes in ([0, 2], [0, 0]), results
    if codes == [0, 2]:
        assert any("in use by pid" in err for rc, err in results if rc == 2)


def test_two_writers_of_one_samples_file_are_refused(tiny_models, tmp_path):
    from analyses.sampling import load_models, sample

    family = load_models([str(tiny_models["llama"])], labels=["base"])
    path = tmp_path / "s.jsonl"
    with FolderLock(tmp_path, what="notebook", name=".s.jsonl.lock"):  # another run appending to it
        with pytest.raises(TwinlensError, match=rf"{path} is in use by pid {os.getpid()} .*notebook"):
            sample(family, ["1+2:"], 2, out=path, max_new_tokens=3, progress=False)
    assert not path.exists()
    rows = sample(family, ["1+2:"], 2, out=path, max_new_tokens=3, progress=False).rows
    assert len(rows) == 2 and not (tmp_path / ".s.jsonl.lock").exists()


def test_the_report_is_not_written_while_another_process_writes_the_folder(tmp_path):
    report = load_script("report")
    holder = _hold_lock(tmp_path / "demo", "demo")
    try:
        with pytest.raises(TwinlensError, match=f"in use by pid {holder.pid}"):
            report.write_report(tmp_path / "demo")
    finally:
        holder.kill()
        holder.wait()
    report.write_report(tmp_path / "demo")
    assert (tmp_path / "demo" / "report.md").exists()


CAPTURE_CHILD = textwrap.dedent(
    """
    import sys, time
    import hooks.capturing as cap
    from hooks import load_model, capture
    real = cap._forward_capture
    def slow(*a, **k):
        time.sleep(0.2)
        return real(*a, **k)
    cap._forward_capture = slow
    capture(load_model(sys.argv[1]), sys.argv[3:], hooks="blocks.*.hook_out", out=sys.argv[2], batch_size=1,
            shard_bytes=1, progress=False)
    """
)


def test_two_captures_into_one_store_do_not_race(tiny_models, tmp_path):
    prompts = [f"{i}+{i % 7}:" for i in range(40)]
    out = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", CAPTURE_CHILD, str(tiny_models["llama"]), str(out), *prompts],
                            env=ENV)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "manifest.json").exists() and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the first capture must still be running"
        with pytest.raises(TwinlensError, match=rf"in use by pid {proc.pid} .*\(capture"):
            capture(load_model(tiny_models["llama"]), prompts, hooks="blocks.*.hook_out", out=out, progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The killed capture's store resumes to exactly the uninterrupted rows (the lock it left is stale).
    model = load_model(tiny_models["llama"])
    resumed = capture(model, prompts, hooks="blocks.*.hook_out", out=out, batch_size=1, progress=False)
    clean = capture(model, prompts, hooks="blocks.*.hook_out", out=tmp_path / "clean", batch_size=4, progress=False)
    assert resumed.n_rows == clean.n_rows
    assert resumed.read("blocks.1.hook_out").equal(clean.read("blocks.1.hook_out"))


# ----------------------------------------------------------------------------- failed writes
def test_disk_full_while_sampling_says_what_was_kept_and_the_rerun_resumes(passk, tiny_models, tmp_path, capsys,
                                                                            monkeypatch):
    import analyses.sampling as sampling

    out = tmp_path / "pk"
    appends = []

    def full_after_one_chunk(path, mode="r", *a, **k):
        if "a" in mode:
            appends.append(path)
            if len(appends) > 1:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return open(path, mode, *a, **k)

    monkeypatch.setattr(sampling, "open", full_after_one_chunk, raising=False)
    assert passk.main(passk_argv(tiny_models, out)) == 2
    err = capsys.readouterr().err
    kept = sample_keys(out / "samples.jsonl")
    assert 0 < len(kept) < 12
    assert "the disk is full" in err and f"samples.jsonl ({len(kept)} complete rows)" in err
    assert "rerun the same command" in err and "Traceback" not in err
    assert read_job_record(out)["complete"] is False

    monkeypatch.undo()
    assert passk.main(passk_argv(tiny_models, out)) == 0
    keys = sample_keys(out / "samples.jsonl")
    assert keys[: len(kept)] == kept and len(keys) == len(set(keys)) == 12


def test_disk_full_in_library_sampling_is_a_clear_error(tiny_models, tmp_path, monkeypatch):
    import analyses.sampling as sampling

    family = sampling.load_models([str(tiny_models["llama"])], labels=["base"])

    def full(path, mode="r", *a, **k):
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return open(path, mode, *a, **k)

    monkeypatch.setattr(sampling, "open", full, raising=False)
    with pytest.raises(TwinlensError, match=r"the disk is full.*Kept: s.jsonl.meta.json.*rerun the same command"):
        sampling.sample(family, ["1+2:"], 2, out=tmp_path / "s.jsonl", max_new_tokens=3, progress=False)


def test_disk_full_while_capturing_keeps_complete_shards_and_resumes(tiny_models, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import hooks.store as store

    real = store.save_file
    calls = []

    def full_on_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:  # inputs, shard 0, then the disk is full (the text safetensors 0.7 gives)
            raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) '
                                  f'at path "{path}"')
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(store, "save_file", full_on_third)
    model = load_model(tiny_models["llama"])
    prompts = [f"{i}+{i}:" for i in range(6)]
    with pytest.raises(TwinlensError, match=r"No space left on device.*keeps 1 complete shards \(examples 0-2\)"
                                            r".*rerun the same capture"):
        capture(model, prompts, out=tmp_path / "s", batch_size=2, shard_bytes=1, progress=False)
    monkeypatch.undo()
    resumed = capture(model, prompts, out=tmp_path / "s", batch_size=2, shard_bytes=1, progress=False)
    clean = capture(model, prompts, out=tmp_path / "c", batch_size=2, progress=False)
    assert resumed.read("blocks.0.hook_out").equal(clean.read("blocks.0.hook_out"))


def test_results_writer_reports_a_full_disk_clearly(tmp_path, monkeypatch):
    import tempfile

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "samples.jsonl").write_text('{"a": 1}\n{"a": 2}\n')

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(TwinlensError, match=r"the disk is full.*samples.jsonl \(2 complete rows\)"):
        write_results(tmp_path / "o", {"x": 1}, "x")


# ----------------------------------------------------------------------------- the demo
def test_demo_only_with_an_unknown_job_lists_the_jobs(capsys):
    demo = load_script("demo")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--only", "passk", "pask", "--out", "unused"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown job(s) pask" in err and "evaluate, capture, probe" in err
    assert not Path("unused").exists()


@pytest.mark.slow  # one passk process started by the demo: ~40 s on a busy 2-core box
def test_demo_reruns_a_job_made_with_other_models_and_says_so(passk, models, tmp_path, monkeypatch, capsys):
    demo = load_script("demo")
    small = ["--difficulty", "3", "--n-problems", "3", "--n-samples", "2", "--max-new-tokens", "6",
             "--n-boot", "20"]
    job = demo.Job("passk", "passk.py", small)
    monkeypatch.setattr(demo, "JOBS", [job])
    # The tiny char-level models speak the organism's task (passk gets --difficulty 3): let the demo
    # treat them as the organism, whose task needs no --problems (this test is about job folders).
    monkeypatch.setattr(demo, "is_organism", lambda spec: True)
    out = tmp_path / "demo"
    pair = ["--base", str(models["llama"]), "--out", str(out)]
    # A demo folder whose passk was made with llama_b (run here in-process, as the demo would run it).
    made = demo.job_command(job, argparse.Namespace(base=str(models["llama"]), rl=[str(models["llama_b"])],
                                                    sft=None, engine="hf"), out / "passk")
    assert passk.main(made[2:]) == 0

    assert demo.main([*pair, "--rl", str(models["llama_b"]), "--no-controls"]) == 0
    assert "done before with the same models and settings, skipped" in capsys.readouterr().out

    assert demo.main([*pair, "--rl", str(models["llama_c"]), "--no-controls"]) == 0
    said = capsys.readouterr().out
    assert "passk: its folder was made with other models or settings (--rl:" in said and "rerunning" in said
    res = json.loads((out / "passk" / "results.json").read_text())
    assert set(res["pass_at_k"]) == {"base", "llama_c"}  # the report reads llama_c's numbers, not llama_b's
    assert {k[0] for k in sample_keys(out / "passk" / "samples.jsonl")} == {"base", "llama_c"}
    assert f"Made with base={models['llama']} (weights" in (out / "report.md").read_text()
    assert f"rl={models['llama_c']} (weights" in (out / "report.md").read_text()


def test_the_report_says_which_models_made_each_job(tiny_models, tmp_path):
    report = load_script("report")
    ident = job_identity("passk", {"base": str(tiny_models["llama"]), "rl": [str(tiny_models["llama_b"])]})
    with claim_folder(tmp_path / "demo" / "passk", ident) as folder:
        folder.finish()
    made = report.made_with(tmp_path / "demo" / "passk")
    h = ident["models"]["rl"][0]["weight_hash"][:12]
    assert made == (f"Made with base={tiny_models['llama']} (weights {ident['models']['base']['weight_hash'][:12]}); "
                    f"rl={tiny_models['llama_b']} (weights {h}).")
    report.write_report(tmp_path / "demo")
    assert made in (tmp_path / "demo" / "report.md").read_text()


def test_demo_plans_folders_of_the_version_before_job_json(tmp_path):
    demo = load_script("demo")
    job = demo.Job("passk", "passk.py", ["--n-problems", "3"])
    cmd = demo.job_command(job, argparse.Namespace(base=None, rl=None, sft=None, engine="hf"), tmp_path / "passk")
    assert demo.plan_job(job, cmd, tmp_path / "passk", force=False) == ("run", "")  # no folder yet
    legacy = tmp_path / "passk"
    legacy.mkdir()
    (legacy / "log.txt").write_text("an earlier demo's log of a failed job")
    assert demo.plan_job(job, cmd, legacy, force=False) == ("run", "")
    assert not (legacy / "log.txt").exists()  # the demo's own old log, removed so the job can claim the folder
    (legacy / "results.json").write_text("{}")
    action, why = demo.plan_job(job, cmd, legacy, force=False)
    assert action == "rerun" and "no job.json" in why


def test_killing_the_demo_kills_its_running_job(tmp_path):
    out = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo.py"), "--only", "passk", "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and child is None and demo.poll() is None:
            owner = lock_owner(out / "passk")  # the job's lock names its pid
            child = owner.get("pid") if owner else None
            time.sleep(0.05)
        assert child is not None and pid_alive(child), "the passk job never started"
        demo.send_signal(signal.SIGKILL)  # only the demo: nobody signals the job
        demo.wait()
        deadline = time.time() + 20
        while time.time() < deadline and pid_alive(child):
            time.sleep(0.05)
        assert not pid_alive(child), "the job outlived the demo"
    finally:
        if demo.poll() is None:
            demo.kill()
        if child is not None and pid_alive(child):
            os.kill(child, signal.SIGKILL)
