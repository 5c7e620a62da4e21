import pytest

from dreammapping.files import atomic_path, atomic_write_text


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"  # the old file survives a failed write
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temporary left behind


def test_atomic_write_text(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_sigkilled_writer_leaves_a_temporary_that_the_next_start_removes(tmp_path):
    import signal
    import subprocess
    import sys

    from dreammapping.files import remove_stale_temporaries

    target = tmp_path / "checkpoint.pt"
    target.write_text("the good checkpoint")
    code = ("import os, signal; from dreammapping.files import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and target.read_text() == "the good checkpoint"
    with atomic_path(tmp_path / "other.txt") as mine:  # a live writer's temporary (this process) is not touched
        assert remove_stale_temporaries(tmp_path) == left
        assert mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "other.txt"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_atomic_dir_swaps_whole_folders_or_keeps_the_old(tmp_path):
    from dreammapping.files import atomic_dir

    target = tmp_path / "unet"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
        assert not target.exists()
    with pytest.raises(OSError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("v2, half")
            raise OSError(28, "No space left on device")
    assert (target / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["unet"]
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["unet"]


def test_write_errors_name_the_target_and_a_full_disk(tmp_path, monkeypatch):
    import errno
    import os

    from dreammapping.files import describe_write_error

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    message = describe_write_error(info.value, info.value.filename)
    assert message.startswith(f"cannot write {tmp_path / 'metrics.json'}: the disk is full")
    assert "not permitted" in describe_write_error(OSError(errno.EPERM, "Operation not permitted"), "/sys/x")
    tmp_name = tmp_path / ".views.png.123.0123abcd.tmp"  # a temporary is named by its target
    assert f"cannot write {tmp_path / 'views.png'}:" in describe_write_error(OSError(errno.EIO, "I/O error"), tmp_name)
