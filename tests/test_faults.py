"""Fault injection with real processes: SIGKILL at random moments and inside checkpoint writes, SIGINT /
SIGTERM, two processes on one folder. Each trial ends with the run resumed and compared bit for bit
with an uninterrupted run. The default suite runs a few trials per case; ``-m slow`` runs 20 per
coupling (CI runs both)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdfm.train import load_latest_checkpoint
from tests.conftest import TORCHRUN_SDFM

SDFM = [sys.executable, "-m", "sdfm"]
STEPS = 60
TRAIN = ["--steps", str(STEPS), "--batch-size", "32", "--width", "16", "--depth", "1", "--quiet"]
COUPLINGS = ["independent", "minibatch-ot", "semidiscrete"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32))
    return path


def _args(data, coupling, out, *extra):
    return [*SDFM, "train", "--data", str(data), "--coupling", coupling, "--out", str(out), *TRAIN, *extra]


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("SDFM_FAULT", None)
    env.update(extra)
    return env


def _run(args, **env):
    return subprocess.run(args, capture_output=True, text=True, env=_env(**env), timeout=600)


def _final(run: Path) -> dict:
    return load_file(str(run / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finish(data, coupling, run: Path) -> None:
    """What a user does after a crash: --resume when the run exists, else start it again."""
    resume = ["--resume"] if (run / "run.json").exists() else []
    done = _run(_args(data, coupling, run, "--checkpoint-every", "5", *resume))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Uninterrupted runs (and their wall time) per coupling."""
    out = {}
    for coupling in COUPLINGS:
        run = tmp_path_factory.mktemp("ref") / coupling
        t0 = time.perf_counter()
        done = _run(_args(data, coupling, run, "--checkpoint-every", "5"))
        assert done.returncode == 0, done.stderr[-2000:]
        out[coupling] = (_final(run), time.perf_counter() - t0)
    return out


def _kill_trials(data, reference, tmp_path, coupling: str, trials: int, seed: int) -> None:
    weights, seconds = reference[coupling]
    rng = random.Random(seed)
    for trial in range(trials):
        run = tmp_path / f"{coupling}-{trial}"
        proc = subprocess.Popen(
            _args(data, coupling, run, "--checkpoint-every", "5"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
        )
        time.sleep(rng.uniform(0.5, seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (run / "checkpoints").exists():  # whatever is there reads cleanly, with no fallback
            ckpt = load_latest_checkpoint(run / "checkpoints")
            assert ckpt is None or ckpt.path.name.startswith("step_")
        _finish(data, coupling, run)
        assert _same(_final(run), weights), f"{coupling} trial {trial}: resumed weights differ"


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_sigkill_at_random_moments_resumes_bit_identical(data, reference, tmp_path, coupling):
    _kill_trials(data, reference, tmp_path, coupling, trials=2, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("coupling", COUPLINGS)
def test_sigkill_at_random_moments_many_trials(data, reference, tmp_path, coupling):
    _kill_trials(data, reference, tmp_path, coupling, trials=20, seed=2)


@pytest.mark.parametrize(
    "where",
    ["checkpoint.written", "checkpoint.synced", "checkpoint.renamed", "checkpoint.latest", "atomic.written"],
)
def test_kill_inside_a_checkpoint_write(data, reference, tmp_path, where):
    """SIGKILL between the write, the fsync, the rename and the ``latest`` update of checkpoint 30 (and
    inside the atomic write of run.json): the previous checkpoint stays loadable and the resumed run
    ends bit-identical."""
    run = tmp_path / "run"
    fault = f"{where}@30" if where.startswith("checkpoint") else where
    killed = _run(_args(data, "independent", run, "--checkpoint-every", "5"), SDFM_FAULT=fault)
    assert killed.returncode == -signal.SIGKILL
    if where.startswith("checkpoint"):
        ckpt = load_latest_checkpoint(run / "checkpoints")
        assert ckpt.step in (25, 30)
    else:
        assert not (run / "run.json").exists()
    _finish(data, "independent", run)
    assert _same(_final(run), reference["independent"][0])
    assert not list(run.rglob(".tmp-*")) and not list((run / "checkpoints").glob(".latest.*"))


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A shell starts background jobs with SIGINT
    ignored, which their children inherit, and Python then installs no KeyboardInterrupt handler: a
    test run started that way (`.ci/run &`) would see SIGINT ignored, not the Ctrl-C of a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, **env):
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
        preexec_fn=_default_sigint,
    )


def _wait_for(path: Path, proc, timeout: float = 120.0) -> None:
    t0 = time.perf_counter()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.perf_counter() - t0 < timeout
        time.sleep(0.05)


def _leftovers(folder: Path) -> list:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_during_train_solve_and_demo(data, tmp_path, sig, code):
    """SIGINT / SIGTERM during train, solve, eval and demo: one line, exit 130 / 143, no partial file."""
    run = tmp_path / "run"
    proc = _start(_args(data, "independent", run, "--checkpoint-every", "5", "--steps", "100000"))
    _wait_for(run / "checkpoints" / "latest", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("sdfm train: stopped by") and "Traceback" not in err
    assert not _leftovers(run) and load_latest_checkpoint(run / "checkpoints") is not None

    out = tmp_path / "g.safetensors"
    args = [*SDFM, "solve", "--data", "checkerboard", "--tol", "0", "--out", str(out), "--quiet"]
    proc = _start([*args, "--save-on-interrupt"])
    _wait_until_solving(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    saved = tmp_path / "g.interrupted.safetensors"
    assert not out.exists() and saved.exists() and "Traceback" not in err
    from sdfm.artifacts import load_potential

    meta = load_potential(saved).meta
    assert (
        meta["solver"]["interrupted"] in ("KeyboardInterrupt", "Terminated")
        and meta["chi2"] > 0
        and meta["chi2_stderr"] > 0
    )
    saved.unlink()
    proc = _start(args)  # without --save-on-interrupt nothing is written
    _wait_until_solving(proc)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode == code and not list(tmp_path.glob("g*.safetensors")) and not _leftovers(tmp_path)

    proc = _start([*SDFM, "eval", "--run", str(run), "--num", "20000", "--reference", str(data), "--quiet"])
    time.sleep(5.0)  # (the evaluation takes about a minute)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("sdfm eval: stopped by") and not _leftovers(run)

    demo = tmp_path / "demo"
    proc = _start([*SDFM, "demo", "--out", str(demo), "--budget", "tiny", "--quiet"])
    _wait_for(demo / ".lock", proc)
    time.sleep(2.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (code, 0), err[-2000:]  # (0: the tiny demo finished first)
    assert "Traceback" not in err and not _leftovers(demo)


def _wait_until_solving(proc) -> None:
    line = proc.stderr.readline()  # "sdfm solve: <data> [N, d] -> <out>", printed before the solve
    assert line.startswith("sdfm solve:"), line
    time.sleep(1.0)


def test_two_processes_on_one_folder(data, tmp_path):
    """The second writer is refused while the first runs; a killed holder leaves no stale lock; sample
    and eval read the newest complete checkpoint of a run that is still training."""
    run = tmp_path / "run"
    first = _start(_args(data, "independent", run, "--checkpoint-every", "5", "--steps", "100000"))
    _wait_for(run / "checkpoints" / "latest", first)
    second = _run(_args(data, "independent", run, "--checkpoint-every", "5", "--resume"))
    assert second.returncode == 2 and f"in use by another sdfm process (pid {first.pid})" in second.stderr
    sample = _run([*SDFM, "sample", "--run", str(run), "--out", str(tmp_path / "s.npy"), "--num", "16"])
    assert sample.returncode == 0, sample.stderr[-2000:]
    evaluated = _run([*SDFM, "eval", "--run", str(run), "--num", "64", "--steps", "1", "--quiet"])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)
    third = _run(_args(data, "independent", run, "--checkpoint-every", "5", "--resume"))
    assert third.returncode == 0, third.stderr[-2000:]


def test_paths_with_spaces_and_non_ascii(data, tmp_path):
    run = tmp_path / "a run ü ✓"
    done = _run(_args(data, "independent", run))
    assert done.returncode == 0, done.stderr[-2000:]
    out = run / "samples ø.npy"
    done = _run([*SDFM, "sample", "--run", str(run), "--out", str(out), "--num", "8"])
    assert done.returncode == 0 and np.load(out).shape == (8, 2)


def _workers(pid: int) -> dict:
    """rank -> pid of the torchrun workers below ``pid`` (read from /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if parent == pid and b"RANK" in env and b"LOCAL_RANK" in env:
            out[int(env[b"RANK"])] = int(entry.name)
    return out


@pytest.mark.slow
@pytest.mark.manual  # not in CI: once, under 3x CPU oversubscription, the resumed rank 1 aborted (SIGABRT)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the worker ranks from /proc")
def test_torchrun_run_killed_on_one_rank_resumes(data, tmp_path):
    """A 2-process DDP run with rank 1 SIGKILLed mid-run: torchrun stops the other rank, --resume
    under torchrun ends bit-identical to an uninterrupted 2-process run."""
    torchrun = TORCHRUN_SDFM

    def args(out, *extra):
        return [*torchrun, *_args(data, "independent", out, "--checkpoint-every", "5", *extra)[len(SDFM) :]]

    ref = _run(args(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    for trial in range(3):
        run = tmp_path / f"run{trial}"
        proc = _start(args(run))
        _wait_for(run / "checkpoints" / "latest", proc)
        time.sleep(0.3 * trial)
        workers = _workers(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        proc.communicate(timeout=300)
        assert proc.returncode != 0
        t0 = time.perf_counter()  # torchrun may return before its other worker has exited: a user
        while any(Path(f"/proc/{pid}").exists() for pid in workers.values()):  # resumes after the crash
            assert time.perf_counter() - t0 < 120, "a killed run's worker did not exit"
            time.sleep(0.1)
        done = _run(args(run, "--resume"))
        assert done.returncode == 0, done.stderr[-8000:]  # (the workers' own messages come first)
        assert _same(_final(run), _final(tmp_path / "ref")), f"trial {trial}"


def _interrupted_at(k: int, files: tuple[str, ...], fn) -> bool:
    """Runs ``fn`` with a KeyboardInterrupt raised before its k-th bytecode inside ``files`` (the way
    a Ctrl-C or the CLI's SIGTERM handler lands between two bytecodes); False once k is past the end."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if not frame.f_code.co_filename.endswith(files):
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
            if count == k:
                raise KeyboardInterrupt
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(previous)
    return False


def test_interrupt_at_every_bytecode_of_a_write_leaves_no_partial_file(tmp_path):
    """An interrupt before any bytecode of atomic_write or save_checkpoint leaves the old file (or
    checkpoint) or the new one, and no temporary file or folder (a SIGTERM right after the temporary
    file was made once left ``.latest.*.tmp`` behind)."""
    from sdfm.artifacts import atomic_write
    from sdfm.train.checkpoint import save_checkpoint

    target = tmp_path / "a" / "file.txt"
    atomic_write(target, lambda p: p.write_text("old"))
    k = 1
    while _interrupted_at(k, ("atomic.py",), lambda: atomic_write(target, lambda p: p.write_text("new"))):
        assert target.read_text() in ("old", "new") and not _leftovers(target.parent), k
        target.write_text("old")
        k += 1
    assert k > 20 and target.read_text() == "new"

    folder = tmp_path / "ckpt"
    model, ema = {"w": torch.arange(4.0)}, {"w": torch.ones(4)}
    save_checkpoint(folder, 1, model=model, ema=ema, state={"s": 1}, meta={})
    k = 1
    while _interrupted_at(
        k,
        ("atomic.py", "checkpoint.py"),
        lambda: save_checkpoint(folder, 2, model=model, ema=ema, state={"s": 2}, meta={}),
    ):
        assert load_latest_checkpoint(folder).step in (1, 2) and not _leftovers(folder), k
        k += 1
    assert k > 100 and load_latest_checkpoint(folder).step == 2
