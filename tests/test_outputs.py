"""What an audit writes (issue #21): its output folder changes all at once or not at all, a full
disk is refused at the start, two audits into one folder are refused, a damaged saved report is
named with its fix, and each command's fix speaks of what its --out is."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from neuronlens import _io, alignment, cli
from neuronlens._io import LOCK_NAME, lock_dir, publish_dir
from neuronlens.cli._outputs import write_audit
from neuronlens.errors import OutputError, ReportError
from test_heatmap import fresh_report, with_risk

ALL = ["report.json", "report.stats.safetensors", "report.html", "certificate.json", "certificate.pdf"]


def enospc(*args, **kwargs):
    """Raise what a write on a full disk raises: ENOSPC, with no file name."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["neuronlens", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0)


def audit_args(out: Path, *extra: str) -> list[str]:
    """An audit refused before any model loads would otherwise fail on the missing model."""
    return ["audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model", "--out", str(out), "--no-progress", *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def report(tmp_path_factory, tok):
    return with_risk(fresh_report(tmp_path_factory, tok))


@pytest.fixture(scope="module")
def earlier_template(tmp_path_factory, tok) -> Path:
    """A folder holding a complete earlier audit (all five files), a user's own file and the lock
    file a crashed run left."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    old = with_risk(fresh_report(tmp_path_factory, tok))
    old.created_at = "2020-01-01T00:00:00Z"
    write_audit(old, out, True, ["json", "pdf"], None)
    (out / "notes.txt").write_text("mine")
    (out / LOCK_NAME).write_text("12345\n")
    assert {*ALL, "notes.txt", LOCK_NAME} == {p.name for p in out.iterdir()}
    return out


@pytest.fixture()
def earlier(tmp_path, earlier_template):
    """A copy of the earlier audit's folder, and its bytes."""
    out = shutil.copytree(earlier_template, tmp_path / "out")
    return out, snapshot(out)


def test_a_full_disk_mid_set_leaves_the_earlier_audit_untouched(monkeypatch, earlier, report):
    out, before = earlier
    real = _io.write_bytes_atomic

    def full_at_pdf(path, data):
        if Path(path).name == "certificate.pdf":
            enospc()
        return real(path, data)

    monkeypatch.setattr(_io, "write_bytes_atomic", full_at_pdf)
    with pytest.raises(OutputError) as exc:
        write_audit(report, out, True, ["json", "pdf"], None)
    assert "No space left on device. The files there were left as they were." in exc.value.problem
    assert "(None)" not in str(exc.value) and "Free space" in exc.value.fix
    assert snapshot(out) == before  # the earlier report, sidecar, HTML, certificates, the user's file
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging folder left


def test_a_rename_that_fails_midway_is_undone(monkeypatch, earlier, report):
    out, before = earlier
    real, into_out = os.replace, []

    def fail_second_into_out(src, dst):  # the commit phase: report.json is in place, its sidecar fails
        if Path(dst).parent == out:
            into_out.append(dst)
            if len(into_out) == 2:
                raise OSError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(_io.os, "replace", fail_second_into_out)
    with pytest.raises(OutputError, match="Permission denied"):
        write_audit(report, out, False, None, None)
    monkeypatch.setattr(_io.os, "replace", real)
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_a_new_set_replaces_the_old_and_stale_files_go(capsys, earlier, report):
    out, before = earlier
    report.created_at = "2021-01-01T00:00:00Z"
    write_audit(report, out, False, None, None)  # no --html, no certificate this time
    after = snapshot(out)
    assert set(after) == {"report.json", "report.stats.safetensors", "notes.txt", LOCK_NAME}
    assert after["report.json"] != before["report.json"] and after["notes.txt"] == b"mine"
    err = " ".join(capsys.readouterr().err.split())
    assert "described another run): report.html, certificate.json, certificate.pdf" in err and LOCK_NAME not in err
    assert alignment.AuditReport.load(out / "report.json").created_at == "2021-01-01T00:00:00Z"


def test_publish_dir_replaces_a_whole_folder_or_leaves_it(tmp_path):
    target = tmp_path / "entry"
    with publish_dir(target) as staged:
        (staged.path / "a").write_text("1")
    with pytest.raises(OSError):
        with publish_dir(target) as staged:
            (staged.path / "b").write_text("2")
            enospc()
    assert [p.name for p in tmp_path.iterdir()] == ["entry"] and (target / "a").read_text() == "1"
    with publish_dir(target, keep=lambda existing: True) as staged:  # an entry another process stored first
        (staged.path / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["a"]
    with publish_dir(target) as staged:
        (staged.path / "d").write_text("4")
    assert [p.name for p in target.iterdir()] == ["d"] and [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_a_nearly_full_disk_is_refused_before_any_work(monkeypatch, capsys, tmp_path):
    real = _io.shutil.disk_usage
    monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    code = run_cli(monkeypatch, *audit_args(tmp_path / "o"))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Only 10.0 MiB is free on the disk of" in err and "needs about 64 MiB" in err, err
    assert "How to fix: Free space on that disk, or choose another output folder (--out)." in err
    assert "does not exist" not in err and not (tmp_path / "o" / "report.json").exists()


def test_a_full_disk_at_the_write_test_is_named_not_a_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(_io.tempfile, "NamedTemporaryFile", enospc)
    code = run_cli(monkeypatch, *audit_args(tmp_path / "o"))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "cannot be written: No space left on device." in err and "Traceback" not in err
    assert "How to fix: Free space on that disk, or choose another output folder (--out), e.g. --out ./neuronlens-out." in err


def test_a_second_audit_into_the_same_folder_is_refused_at_once(monkeypatch, capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with lock_dir(out, "audit", "x"):  # a first audit, still running
        code = run_cli(monkeypatch, *audit_args(out))
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"  # the refused run left the holder's lock alone
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and f"Another audit (pid {os.getpid()}) is writing into {out}." in err, err
    assert "Wait for it to finish, or choose another output folder (--out)." in err and "does not exist" not in err
    code = run_cli(monkeypatch, *audit_args(out))  # the lock was released: now the model is what is wrong
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # an audit removes its lock file when it ends, failed or not


def test_a_crashed_audits_lock_blocks_nobody(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    crash = ("import fcntl, os, signal, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
             "f.write(str(os.getpid())); f.flush(); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", crash, str(out / LOCK_NAME)])
    assert r.returncode == -signal.SIGKILL and (out / LOCK_NAME).read_text()  # its pid is still written there
    with lock_dir(out, "audit", "x"):
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (out / LOCK_NAME).exists()


def test_a_lock_file_removed_between_open_and_flock_is_opened_again(monkeypatch, tmp_path):
    """The holder removes its lock file when done: a writer that opened the file just before must
    not lock the removed file (a third writer would lock a new one beside it)."""
    (tmp_path / LOCK_NAME).write_text("999\n")
    real, calls = _io._flock, []

    def holder_just_left(fh):
        if not calls:
            (tmp_path / LOCK_NAME).unlink()
        calls.append(fh)
        return real(fh)

    monkeypatch.setattr(_io, "_flock", holder_just_left)
    with lock_dir(tmp_path, "audit", "x"):
        assert len(calls) == 2 and (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_load_names_a_truncated_sidecar_or_report(tmp_path, report):
    path = report.save(tmp_path / "report.json")
    sidecar = tmp_path / "report.stats.safetensors"
    sidecar.write_bytes(sidecar.read_bytes()[: sidecar.stat().st_size // 2])
    with pytest.raises(ReportError) as exc:
        alignment.AuditReport.load(path)
    assert str(sidecar) in exc.value.problem and "cannot be read" in exc.value.problem
    assert "Copy it again" in exc.value.fix and "moved away" in exc.value.fix
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ReportError, match="the file ends early, as a truncated one does") as exc:
        alignment.AuditReport.load(path)
    assert str(path) in exc.value.problem
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ReportError, match="is not text"):
        alignment.AuditReport.load(path)


def test_save_into_a_folder_writes_report_json_there_and_nothing_stray(monkeypatch, tmp_path, report):
    folder = tmp_path / "audit"
    folder.mkdir()
    assert report.save(folder) == folder / "report.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "report.stats.safetensors"]
    assert alignment.AuditReport.load(folder).sums is not None
    assert report.save(f"{tmp_path}/new/") == tmp_path / "new" / "report.json"
    before = snapshot(folder)
    monkeypatch.setattr("neuronlens.report._report.write_json_atomic", enospc)  # the sidecar is written, the JSON fails
    with pytest.raises(OSError):
        report.save(folder)
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == sorted(before)


def test_screen_and_keygen_fixes_name_their_own_out(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    code = run_cli(monkeypatch, "screen", data, "--base", "/nonexistent/model", "--out", blocker / "sub" / "ranked.jsonl")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "give --out a file in a folder you can write to, e.g. --out ./ranked.jsonl" in err.lower()
    assert "neuronlens-out" not in err
    code = run_cli(monkeypatch, "keygen", "--out", blocker / "sub" / "signer")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "cannot be written" in err and "Give --out a path prefix in a folder you can write to" in err
    assert "neuronlens-out" not in err
