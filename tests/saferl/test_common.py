"""The shared layer: atomic writes, the checkpoint format, device/seed/thread helpers, the PID
Lagrangian. Several tests reproduce bad behaviour found in a hostile-input pass (each failed
before ``saferl.common`` existed)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from saferl.common import (
    PIDLagrangian,
    PIDLagrangianConfig,
    atomic_write,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seeded,
    torch_threads,
    write_json,
)


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    with pytest.raises(ZeroDivisionError):
        atomic_write(path, lambda f: (f.write(b"partial"), 1 / 0))
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert os.listdir(tmp_path) == ["x.json"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_json(tmp_path / "missing" / "y.json", {})


def test_atomic_write_keeps_permissions_and_symlinks(tmp_path):
    private = tmp_path / "private.json"
    write_json(private, {"v": 1})
    os.chmod(private, 0o600)
    write_json(private, {"v": 2})
    assert private.stat().st_mode & 0o777 == 0o600  # not made world-readable
    link = tmp_path / "link.json"
    os.symlink(private, link)
    write_json(link, {"v": 3})
    assert link.is_symlink() and '"v": 3' in private.read_text()
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "new.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o600  # the umask decides


def test_atomic_write_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    write_json(tmp_path / "x.json", {})
    assert len(calls) >= 1


def test_sigkill_during_a_large_save_leaves_the_old_file_and_no_temp_file(tmp_path):
    """A dataset save killed mid-write: the old file is intact and nothing else is left."""
    from saferl.data import REQUIRED_KEYS, infer_metadata, load_dataset, save_dataset

    def make(n: int, value: float) -> dict:
        rng = np.random.default_rng(0)
        data = {k: np.full(n, value, np.float32) for k in REQUIRED_KEYS}
        for k in ("observations", "next_observations", "actions"):
            data[k] = rng.normal(size=(n, 64)).astype(np.float32)
        data["terminals"][:] = 0
        data["timeouts"][:] = 0
        data["timeouts"][-1] = 1
        return data

    path = tmp_path / "d.hdf5"
    small = make(10, 1.0)
    save_dataset(path, small, infer_metadata(small, "SaferlPlanar-HopperVelocity-v1"))
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from saferl.data import REQUIRED_KEYS, infer_metadata, save_dataset
        n = 400_000
        rng = np.random.default_rng(1)
        data = {{k: np.full(n, 2.0, np.float32) for k in REQUIRED_KEYS}}
        for k in ("observations", "next_observations", "actions"):
            data[k] = rng.normal(size=(n, 64)).astype(np.float32)
        data["terminals"][:] = 0; data["timeouts"][:] = 0; data["timeouts"][-1] = 1
        meta = infer_metadata(data, "SaferlPlanar-HopperVelocity-v1")
        print("saving", flush=True)
        save_dataset({str(path)!r}, data, meta)
        print("saved", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    import time

    time.sleep(0.3)  # compressing ~300 MB takes seconds: the kill lands mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the save finished before the kill; enlarge it"
    assert sorted(os.listdir(tmp_path)) == ["d.hdf5"]  # no temp file, named or hidden
    assert path.read_bytes() == before
    data, _ = load_dataset(path)
    np.testing.assert_array_equal(data["rewards"], small["rewards"])


def test_checkpoint_round_trip_and_kind(tmp_path):
    net = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c", net, {"width": 3}, kind="toy")
    state, config = load_checkpoint(tmp_path / "c", "toy")
    assert config == {"width": 3} and torch.equal(state["weight"], net.weight.detach())
    with pytest.raises(ValueError, match="'toy' checkpoint, expected 'fisor'"):
        load_checkpoint(tmp_path / "c", "fisor")
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_checkpoint(tmp_path / "none", "toy")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "d", net, {"bad": object()}, kind="toy")
    assert not (tmp_path / "d" / "model.safetensors").exists()  # nothing half-written


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_seeded_and_threads_leave_the_process_as_they_found_it():
    torch.manual_seed(123)
    np.random.seed(7)
    expected_t, expected_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(7)
    with seeded(0):
        a = torch.rand(2)
    with seeded(0):
        b = torch.rand(2)
    assert torch.equal(a, b)
    torch.testing.assert_close(torch.rand(3), expected_t)
    np.testing.assert_array_equal(np.random.rand(3), expected_n)
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with torch_threads(0):
            pass


def test_agents_do_not_reseed_the_global_rng():
    """Building an offline agent used to call torch.manual_seed(seed) on the process."""
    from saferl.offline import BC, FISOR, BCConfig, BCQLag, BCQLagConfig, FISORConfig

    small = {"actor_width": 16, "actor_blocks": 1, "critic_hidden": (16,),
             "actor_batch_size": 8, "critic_batch_size": 8, "actor_splits": 1}  # fmt: skip
    for build in (lambda: BC(3, 2, BCConfig(hidden=(8,)), "cpu"),
                  lambda: BCQLag(3, 2, BCQLagConfig(hidden=(8,), vae_hidden=(8,)), 10, "cpu"),
                  lambda: FISOR(3, 2, FISORConfig(**small), "cpu")):  # fmt: skip
        torch.manual_seed(99)
        expected = torch.rand(4)
        torch.manual_seed(99)
        build()
        torch.testing.assert_close(torch.rand(4), expected)


def test_one_pid_lagrangian_covers_both_uses():
    plain = PIDLagrangian(PIDLagrangianConfig.plain())
    assert plain.update(5.0, 2.0) == pytest.approx(0.3 + 0.009 + 0.005)  # the first cost rises
    smoothed = PIDLagrangian()  # collection: EMA, capped at 10, no rise at the first step
    assert smoothed.update(5.0, 2.0) == pytest.approx(0.1 * 0.05 * 3 + 0.009)
    capped = PIDLagrangian(PIDLagrangianConfig(lambda_max=0.5, ki=1.0))
    assert capped.update(100.0, 0.0) == 0.5
    assert math.isinf(PIDLagrangianConfig.plain().lambda_max)
    with pytest.raises(ValueError, match="kp"):
        PIDLagrangianConfig(kp=math.nan)
