"""Hostile input to the run side: bad flags, used or unwritable folders, two writers, a
closed pipe, a huge summary. Each is refused with one line that names the thing, a non-zero
exit and no traceback, and changes nothing on disk.

Damaged files are in test_hostile_files.py; kills, signals, a full disk and divergence in
test_hostile_writes.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import QUICK, RESUME, SHAPES, copy_of, finish_a_run, one_line, snapshot

from minivgg import runfolder
from minivgg.cli import main
from minivgg.runfolder import RUN_FILES, RunFolder, RunFolderError, new_run_dir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finish_a_run(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def run_copy(finished_run, tmp_path):
    return copy_of(finished_run, tmp_path)


# -- every flag checked at parse time -----------------------------------------------------------
BAD_FLAGS = [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-3"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--momentum", "1"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"), (["--width", "0"], "--width"),
    (["--width", "nan"], "--width"), (["--input-size", "16"], "--input-size"),
    (["--input-size", "33"], "--input-size"), (["--model", "16,X,M"], "--model"),
    (["--model", ",,,"], "--model"), (["--model", "Z"], "--model"), (["--step", "0"], "--step"),
    (["--crop-padding", "-1"], "--crop-padding"), (["--seed", "-1"], "--seed"),
    (["--overfit-batch", "0"], "--overfit-batch"), (["--limit", "0"], "--limit"),
    (["--limit", "-1"], "--limit"), (["--hidden", "0"], "--hidden"),
    (["--warmup", "-1"], "--warmup"), (["--milestones", "-1"], "--milestones"),
    (["--patience", "-1"], "--patience"), (["--prefetch", "-1"], "--prefetch"),
    (["--val-split", "1"], "--val-split"), (["--val-split", "-0.1"], "--val-split"),
    (["--dropout", "1"], "--dropout"), (["--gamma", "0"], "--gamma"),
]
OTHER_COMMANDS = [
    (["predict", "run", "x.png", "--top", "-1"], "--top"),
    (["predict", "run", "x.png", "--top", "0"], "--top"),
    (["summary", "--classes", "0"], "--classes"), (["summary", "--classes", "-2"], "--classes"),
    (["summary", "--input", "100"], "--input"), (["summary", "vgg99"], "model"),
    (["summary", "--width", "-1"], "--width"), (["gradcheck", "--width", "0"], "--width"),
    (["bench", "--batch-size", "0"], "--batch-size"), (["bench", "--steps", "0"], "--steps"),
]
CASES = [(["train", *argv], flag) for argv, flag in BAD_FLAGS] + OTHER_COMMANDS


@pytest.mark.parametrize("argv,flag", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_bad_value_stops_the_parser_with_one_line(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    line = one_line(capsys)
    assert f"argument {flag}:" in line and repr(argv[-1]) in line and "expected" in line
    assert not list(tmp_path.iterdir())                   # nothing written


def test_plateau_without_a_validation_split_is_refused(tmp_path, capsys):
    assert main([*SHAPES, "--schedule", "plateau", "--val-split", "0", "--out",
                 str(tmp_path / "run"), *QUICK]) == 2
    assert "--val-split" in one_line(capsys) and not (tmp_path / "run").exists()


# -- run folders -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RUN_FILES)
def test_train_refuses_a_folder_that_holds_a_run_file(name, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"someone's results")
    assert main([*SHAPES, "--out", str(out), *QUICK]) == 2
    line = one_line(capsys)
    assert name in line and f"--resume {out}" in line
    assert snapshot(out) == {name: b"someone's results"}


def test_train_refuses_an_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep")
    assert main([*SHAPES, "--out", str(out), *QUICK]) == 2
    assert "is a file" in one_line(capsys) and out.read_text() == "keep"


def test_train_refuses_a_folder_it_cannot_write(tmp_path, capsys, monkeypatch):
    out = tmp_path / "read-only"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):     # as root, chmod would not stop us
        if str(path).startswith(str(out)) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", read_only)
    assert main([*SHAPES, "--out", str(out), *QUICK]) == 2
    line = one_line(capsys)
    assert str(out) in line and "Permission denied" in line and "--out" in line
    assert not list(out.iterdir())


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runfolder.secrets, "token_hex", lambda n: next(suffixes))
    monkeypatch.setattr(runfolder.time, "strftime", lambda fmt: "20260101-120000")
    first = new_run_dir("shapes", "16,M,32,M", tmp_path)
    second = new_run_dir("shapes", "16,M,32,M", tmp_path)      # same second, same suffix first
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == "shapes-16_M_32_M-20260101-120000-bbbbbb"


def test_a_second_writer_is_refused_while_a_run_holds_the_folder(run_copy, capsys):
    before = snapshot(run_copy)
    with RunFolder(run_copy, resume=True):                      # the first --resume, running
        assert main(["train", "--resume", str(run_copy), *RESUME]) == 2
        line = one_line(capsys)
        assert "in use by another run" in line and f"process {os.getpid()}" in line
    assert snapshot(run_copy) == before                          # .lock gone, files intact


def test_a_fresh_run_is_refused_a_folder_another_fresh_run_holds(tmp_path, capsys):
    with RunFolder(tmp_path / "run"):
        assert main([*SHAPES, "--out", str(tmp_path / "run"), *QUICK]) == 2
        assert "in use by another run" in one_line(capsys)
    assert not list((tmp_path / "run").iterdir())


def test_the_lock_dies_with_its_process(tmp_path):
    """flock is released by the kernel when the holder is killed; a stale .lock is no lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom minivgg.runfolder import RunFolder\n"
         "with RunFolder(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
         str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"process {holder.pid}"):
            RunFolder(tmp_path / "run").__enter__()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / ".lock").exists()
    with RunFolder(tmp_path / "run"):
        pass


def test_resume_removes_temporary_files_a_kill_left_behind(run_copy, capsys):
    orphan = run_copy / ".last.npz.k1ll3d.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run_copy), *RESUME]) == 0
    assert not orphan.exists() and not (run_copy / ".lock").exists()


# -- output ------------------------------------------------------------------------------------
def test_a_reader_that_leaves_early_gets_no_traceback(finished_run):
    """`minivgg eval run | head -1`, made certain: stdout is a pipe nobody reads."""
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"
            "from minivgg.cli import main\n"
            "sys.exit(main(['eval', sys.argv[1], '--no-plots', '--backend', 'numba']))")
    result = subprocess.run([sys.executable, "-c", code, str(finished_run)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_summary_of_a_huge_network_allocates_no_weights():
    code = ("import re\nfrom minivgg.cli import main\n"
            "main(['summary', 'vgg16', '--input', '1024'])\n"
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    peak_mib = int(out.split()[-1]) / 1024
    convs = 14_714_688                                  # VGG-16's 13 convolutions
    dense = 512 * 32 * 32 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert f"Total params: {convs + dense:,}" in out     # 2.2 billion: 8 GiB of float32
    assert peak_mib < 600, f"peak resident memory {peak_mib:.0f} MiB"
