import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rlab import runs
from rlab.runs import CheckpointError, RunDir, atomic_write_text, load_checkpoint, save_checkpoint


def test_atomic_write_interrupted_midway_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, '{"old": 1}')

    real_fsync = os.fsync

    def crash(fd):  # the new bytes are half on disk when the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"new": ' + "9" * 100_000 + "}")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"], "temp file left behind"


def test_sigkill_during_writes_leaves_a_readable_file(tmp_path):
    path = tmp_path / "metrics.json"
    code = textwrap.dedent(f"""
        from rlab.runs import atomic_write_text
        import json
        i = 0
        while True:
            atomic_write_text({str(path)!r}, json.dumps({{"i": i, "pad": "x" * 2_000_000}}))
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 30
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        seen = []
        for _ in range(5):
            time.sleep(0.13)
            data = json.loads(path.read_text())
            assert data["pad"] == "x" * 2_000_000
            seen.append(data["i"])
        assert proc.poll() is None, "the writer must still be running when it is killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert seen == sorted(seen) and seen[-1] > seen[0], "the file was rewritten while being read"
    assert json.loads(path.read_text())["i"] >= seen[-1]  # killed mid-write: the last whole version is there


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_that_carries_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_checkpoint_roundtrip_with_rng_state(tmp_path):
    torch.manual_seed(0)
    state = {"model": {"w": torch.randn(3)}, "rng": runs.rng_state(), "step": 7}
    expected = torch.rand(4)
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    torch.rand(10)  # move the generator on, then restore it
    runs.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(4), expected)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_run_folder_layout_and_never_overwritten(runs_root):
    a = RunDir.create("rl", "CartPole-v1", 3, {"lr": 0.1})
    b = RunDir.create("rl", "CartPole-v1", 3, {"lr": 0.1})
    assert a.path != b.path and a.path.parent == b.path.parent == runs_root / "rl"
    cfg = json.loads((a.path / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["options"] == {"lr": 0.1}
    assert "torch" in cfg["versions"] and "device" in cfg
    a.log(1, **{"charts/episode_return": 10.0})
    a.log(2, **{"charts/episode_return": 12.0, "losses/policy": 0.5})
    a.flush()
    reopened = RunDir.open(a.path)
    assert [r["step"] for r in reopened.metrics] == [1, 2]
    assert reopened.metrics[1]["losses/policy"] == 0.5
    reopened.truncate_metrics(1)
    assert [r["step"] for r in RunDir.open(a.path).metrics] == [1]
    a.save_checkpoint({"step": 2})
    assert a.load_checkpoint()["step"] == 2 and (a.path / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("has_filter", [True, False], ids=["data-filter", "python-without-filter"])
def test_extract_tar_keeps_files_and_refuses_escapes(tmp_path, monkeypatch, has_filter):
    import io
    import tarfile

    from rlab.runs import extract_tar

    if not has_filter:  # Debian 12's Python 3.11.2 has no tarfile.data_filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(*names):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
        buf.seek(0)
        return tarfile.open(fileobj=buf)

    extract_tar(archive("a/b.txt"), tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b.txt").read_bytes() == b"ok"
    with pytest.raises(tarfile.TarError):
        extract_tar(archive("../escaped.txt"), tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()
