"""The CLI as a shell user types it: symlinks, devices and FIFOs as outputs, reports and registry
files; environment variables with odd values; stdout for data, stderr for messages."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from upscale.cli import cli

FAST = ["--precision", "fp32", "--compile", "off", "--threads", "2"]


def _invoke(args: list) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _photo(path: Path, size=(12, 10)) -> Path:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PILImage.fromarray(arr).save(path)
    return path


def test_a_report_sent_to_a_fifo_arrives_and_the_fifo_stays(tmp_path, tiny_x2):
    """`--report /dev/stdout` (or a FIFO, `>(jq .)`) used to be replaced by a regular file: as root,
    /dev/stdout itself was gone for every later program."""
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "a.png")
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stdout.write(open({str(fifo)!r}).read())"],
                              stdout=subprocess.PIPE, text=True)
    try:
        res = _invoke(["batch", src, "--out", tmp_path / "out", "-m", tiny_x2, *FAST, "-q", "--report", fifo])
        assert res.exit_code == 0, res.output
        assert json.loads(reader.communicate(timeout=60)[0])["done"] == 1
    finally:
        reader.kill()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_output_that_is_a_symlink_is_written_through_it(tmp_path, tiny_x2):
    src = _photo(tmp_path / "a.png")
    (tmp_path / "results").mkdir()
    real = tmp_path / "results" / "latest.png"
    real.write_bytes(b"old")
    link = tmp_path / "latest.png"
    link.symlink_to(real)
    res = _invoke([src, "-o", link, "--force", "-m", tiny_x2, *FAST, "-q"])
    assert res.exit_code == 0, res.output
    assert link.is_symlink()
    with PILImage.open(real) as im:
        assert im.size == (24, 20)


def test_models_add_keeps_a_symlinked_registry_file(tmp_path, monkeypatch, tiny_x2):
    """A models.toml kept in a dotfiles repository and linked into the config folder (GNU stow,
    chezmoi): adding a model changes the linked file and keeps the link."""
    dotfiles, config = tmp_path / "dotfiles", tmp_path / "config"
    dotfiles.mkdir()
    config.mkdir()
    (dotfiles / "models.toml").write_text("")
    (config / "models.toml").symlink_to(dotfiles / "models.toml")
    monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(config))
    res = _invoke(["models", "add", "mine", tiny_x2])
    assert res.exit_code == 0, res.output
    assert (config / "models.toml").is_symlink() and "mine" in (dotfiles / "models.toml").read_text()


def test_a_config_or_cache_folder_that_is_a_file_is_named_as_such(tmp_path, monkeypatch, tiny_x2):
    """UPSCALE_CONFIG_DIR / UPSCALE_CACHE set to a file: one line saying so, not mkdir's "File exists"."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for config in (afile, afile / "sub"):
        monkeypatch.setenv("UPSCALE_CONFIG_DIR", str(config))
        res = _invoke(["models", "add", "mine", tiny_x2])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.stderr
        assert lines[0].endswith(f"cannot write the user registry ({afile} is not a folder)")
    from upscale import errors, tuned

    monkeypatch.setenv("UPSCALE_CACHE", str(afile))
    with pytest.raises(errors.TuneCacheError, match=f"{afile} is not a folder"):
        tuned.store(tuned.probe_key(2), {"precision": "fp32", "estimate_s": {"fp32": 0.5}}, label="probe")
    assert afile.read_text() == "x"


def _started(args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "upscale", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_stops_a_batch_as_ctrl_c_does_with_its_report(tmp_path):
    """`timeout`, `kill`, `docker stop` and schedulers send SIGTERM: the batch used to die at once with
    128+15, no summary and no report; now the image in flight finishes, the report says what was not
    started, exit 130."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        _photo(src / f"{i:02d}.png", (96, 96))
    out, report = tmp_path / "out", tmp_path / "report.json"
    proc = _started(["batch", src, "--out", out, "--report", report, "--workers", "1", *FAST], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*_x4.png")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    summary = json.loads(report.read_text())
    assert summary["interrupted"] and summary["not_started"] > 0 and summary["done"] >= 1
    assert "interrupted after" in err
    assert not [p for p in out.iterdir() if p.name.endswith(".upscale-tmp")]


def test_sigterm_ends_a_single_run_as_ctrl_c_does(tmp_path):
    src = _photo(tmp_path / "big.png", (400, 400))
    proc = _started([src, "-s", "4", *FAST], tmp_path)
    try:
        proc.stderr.readline()      # a first info line: the command runs (its handlers are in place)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip().endswith("upscale: interrupted"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]      # no temp, no output


def test_a_full_disk_under_a_checkpoint_or_the_metrics_log_is_one_typed_error(tmp_path):
    """A training whose disk filled said "internal error: OSError: [Errno 28] No space left on device"
    without naming a file; /dev/full (linked in place, written through) is a disk that is full."""
    from upscale import errors
    from upscale.train.checkpoint import save_checkpoint
    from upscale.train.runfolder import RunFolder

    ckpt = tmp_path / "run" / "checkpoints" / "iter_00000001.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.symlink_to("/dev/full")
    with pytest.raises(errors.CheckpointError, match=r"cannot write the checkpoint \(No space left on device\)"):
        save_checkpoint(ckpt, {"iteration": 1})
    folder = RunFolder(tmp_path / "run")
    folder.metrics_path.symlink_to("/dev/full")
    with pytest.raises(errors.TrainingError, match=r"metrics.jsonl: cannot add to the metrics log \(No space"):
        folder.append_metrics({"iter": 1})


def test_a_batch_output_that_links_to_an_input_fails_and_the_input_is_kept(tmp_path, tiny_x2):
    """Outputs are written through symlinks now (the link is kept): one that leads to an input, itself
    or through a linked folder, would overwrite that input; that file fails, the others run."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        _photo(src / name)
    out.mkdir()
    (out / "a_x2.png").symlink_to(src / "a.png")
    (out / "sub").symlink_to(src / "sub")              # with --name {stem}: out/sub/c.png is in/sub/c.png
    before = {p: p.read_bytes() for p in src.rglob("*.png")}
    for extra in ([], ["--overwrite"]):
        res = _invoke(["batch", src, "--out", out, "-r", "--name", "{stem}_x2", "-m", tiny_x2, *FAST, "-q", *extra])
        assert res.exit_code == 3 and "leads to the input" in res.stderr, res.output
        res = _invoke(["batch", src, "--out", out, "-r", "--name", "{stem}", "-m", tiny_x2, *FAST, "-q", *extra])
        assert res.exit_code == 3 and f"leads to the input {src / 'sub' / 'c.png'}" in res.stderr, res.output
    assert {p: p.read_bytes() for p in before} == before
    assert (out / "b_x2.png").is_file() and (out / "a_x2.png").is_symlink()


def _upscale_to(stdout: object, args: list, tmp_path: Path, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upscale", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, cwd=tmp_path, timeout=120, **kwargs)


@pytest.mark.parametrize("args", [["models", "--json"], ["--help"], ["--version"]])
def test_a_stdout_that_cannot_be_written_is_one_line_and_exit_1(tmp_path, args):
    """`upscale models --json > /dev/full` said "internal error: OSError"; `upscale --help > /dev/full`
    (click writes it before any command runs) printed a traceback."""
    with open("/dev/full", "w") as full:
        proc = _upscale_to(full, args, tmp_path)
    assert (proc.returncode, proc.stderr) == (1, "upscale: cannot write to standard output (No space left on "
                                                 "device)\n")


def test_a_closed_stdout_is_said_and_a_run_that_writes_none_still_works(tmp_path):
    """`upscale models >&-` exited 0 having printed nothing; a run (whose lines go to stderr) is fine."""
    proc = _upscale_to(None, ["models"], tmp_path, preexec_fn=lambda: os.close(1))
    assert (proc.returncode, proc.stderr) == (1, "upscale: cannot write to standard output (Bad file descriptor)\n")
    src = _photo(tmp_path / "a.png")
    proc = _upscale_to(None, [src, "-s", "2", "-q", *FAST], tmp_path, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a_x2.png").is_file()


def _closed_pipe(args: list, tmp_path: Path, streams: str) -> subprocess.CompletedProcess:
    """``upscale ARGS`` with stdout (``streams`` "out"), stderr ("err") or both on a pipe whose reader
    has gone, as ``| head -1`` (``2>&1 | head -1``) leaves it; what stderr said, where it is not the pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "upscale", *map(str, args)], text=True, cwd=tmp_path,
                              timeout=60, stdout=write_end if streams in ("out", "both") else subprocess.DEVNULL,
                              stderr=write_end if streams in ("err", "both") else subprocess.PIPE)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["models"], ["models", "--json"], ["--help"], ["--version"], ["tune", "--show"]])
def test_a_pipe_closed_by_its_reader_ends_the_command_quietly(tmp_path, args):
    """`upscale models | head -1` exited 1, as a failure: the rest of the output is dropped without a word
    (no traceback, no "Exception ignored ... BrokenPipeError") and the command exits as it would have."""
    for streams in ("out", "both"):
        proc = _closed_pipe(args, tmp_path, streams)
        assert (proc.returncode, proc.stderr or "") == (0, ""), (args, streams)


@pytest.mark.parametrize("streams", ["out", "err", "both"])
def test_a_batch_whose_pipe_closes_writes_every_output_and_its_report(tmp_path, tiny_x2, streams):
    """`upscale batch ... --json | head -1` exited 1 with every output written and no --report; with
    stderr on the pipe too (`2>&1 | head -1`) the first progress line killed a writer thread and the
    run hung for ever."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        _photo(src / f"a{i}.png", size=(12 + i, 10))
    proc = _closed_pipe(["batch", src, "-o", tmp_path / "out", "-m", tiny_x2, "--json", "--report",
                         tmp_path / "report.json", "--workers", "1", *FAST], tmp_path, streams)
    assert proc.returncode == 0, proc.stderr
    assert streams != "out" or "4 done, 0 skipped, 0 failed" in proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["done"] * 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".upscale-batch.jsonl", *(f"a{i}_x2.png"
                                                                                            for i in range(4))]
    for i in range(4):
        assert PILImage.open(tmp_path / "out" / f"a{i}_x2.png").size == (2 * (12 + i), 20)
