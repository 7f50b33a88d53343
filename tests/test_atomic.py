"""The one atomic-write helper: success, every failure path, symlinks, and the temp sweep."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from upscale import atomic


def _temps(folder):
    return [p for p in folder.iterdir() if atomic.is_temp_name(p.name)]


def test_write_puts_file_in_place_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    atomic.write_bytes(target, b"one")
    atomic.write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic.write_text(tmp_path / "t.txt", "é\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é\n"
    assert _temps(tmp_path) == []


def test_failure_inside_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target) as f:
            f.write(b"half")
            raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old"
    assert _temps(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_file(target) as f:
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []


def test_missing_folder_and_target_that_is_a_folder_raise_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic.write_bytes(tmp_path / "nope" / "a.bin", b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        atomic.write_bytes(tmp_path / "d", b"x")
    assert (tmp_path / "d").is_dir() and _temps(tmp_path) == []


def test_temp_names_are_unpredictable_and_never_follow_links(tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.png"
    names = set()
    for _ in range(3):
        with atomic.atomic_file(target) as f:
            names.update(p.name for p in _temps(tmp_path))
            # plant a link at the next "obvious" temp names: it must not matter
            for guess in (f".{target.name}.upscale-tmp", f".{target.name}.tmp"):
                if not (tmp_path / guess).exists():
                    (tmp_path / guess).symlink_to(victim)
            f.write(b"result")
    assert len(names) == 3 and all(n.endswith(atomic.TEMP_SUFFIX) for n in names)
    assert victim.read_bytes() == b"precious" and target.read_bytes() == b"result"


def test_sweep_removes_dead_owners_temps_only(tmp_path):
    # a temp of a process that has exited (a real child, killed), one of ours (alive), one foreign file
    code = ("import os, sys; from upscale import atomic\n"
            "cm = atomic.atomic_file(sys.argv[1]); f = cm.__enter__(); f.write(b'x'); f.flush()\n"
            "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.png")], capture_output=True, text=True,
                         check=True)
    assert out.returncode == 0
    [dead_temp] = _temps(tmp_path)
    with atomic.atomic_file(tmp_path / "y.png") as f:
        f.write(b"y")
        [live_temp] = [p for p in _temps(tmp_path) if p != dead_temp]
        (tmp_path / ".z.png.tmp").write_bytes(b"not ours")
        assert atomic.sweep_temps(tmp_path, name="other.png") == []
        removed = atomic.sweep_temps(tmp_path)
        assert removed == [dead_temp]
        assert live_temp.exists()
    assert not dead_temp.exists() and (tmp_path / ".z.png.tmp").exists()
    assert (tmp_path / "y.png").read_bytes() == b"y"


# --- read, change, write back: `updating` ---------------------------------------------------------
_INCREMENT = ("import sys, time; from pathlib import Path; from upscale import atomic\n"
              "path = Path(sys.argv[1])\n"
              "for _ in range(int(sys.argv[2])):\n"
              "    with atomic.updating(path):\n"
              "        n = int(path.read_text()) if path.exists() else 0\n"
              "        time.sleep(0.002)   # widen the read-to-write gap another process could write in\n"
              "        atomic.write_text(path, str(n + 1), durable=False)\n")


def test_updating_keeps_every_change_of_concurrent_processes(tmp_path):
    # three real processes each add 1 to a counter 30 times; without the lock most adds are lost
    counter = tmp_path / "count.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _INCREMENT, str(counter), "30"]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "90"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".count.txt.lock", "count.txt"]


def test_updating_times_out_as_an_oserror_naming_the_file(tmp_path):
    target = tmp_path / "registry.toml"
    holder = ("import sys, time; from upscale import atomic\n"
              "with atomic.updating(sys.argv[1]):\n"
              "    print('held', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match="registry.toml stayed locked by another process for 0.2 s"):
            with atomic.updating(target, timeout_s=0.2):
                pass
    finally:
        proc.kill()
        proc.communicate()
    with atomic.updating(target, timeout_s=5):   # a killed holder's lock is free again
        pass


def test_a_long_target_name_gets_a_temp_name_that_fits(tmp_path):
    """A temp file's name is its target's plus ~50 bytes: for a target name of 240 bytes the temp name
    was over 255 and every write failed (after the model had run). The temp now carries the name's
    start and a hash of all of it, and sweeps still find a dead writer's temp for that target."""
    name = "é" * 100 + "c" * 40 + "_x4.png"              # 247 bytes in UTF-8
    target = tmp_path / name
    assert atomic.target_problem(target) is None
    with atomic.atomic_file(target) as f:
        temps = [p for p in tmp_path.iterdir() if atomic.is_temp_name(p.name)]
        assert len(temps) == 1 and len(temps[0].name.encode()) <= atomic.NAME_MAX
        f.write(b"data")
    assert target.read_bytes() == b"data"

    dead = subprocess.run([sys.executable, "-c", "import os, sys; from upscale import atomic\n"
                           "cm = atomic.atomic_file(sys.argv[1]); f = cm.__enter__(); f.write(b'x'); f.flush(); os._exit(0)",
                           str(target)], check=True)
    assert dead.returncode == 0
    left = [p for p in tmp_path.iterdir() if atomic.is_temp_name(p.name)]
    assert len(left) == 1
    other = tmp_path / ("d" * 240 + ".png")
    assert atomic.sweep_temps(tmp_path, name=other.name) == []       # another target's temps are kept
    assert atomic.sweep_temps(tmp_path, name=name) == left


def test_a_target_name_longer_than_file_names_hold_is_refused_up_front(tmp_path):
    kind, message = atomic.target_problem(tmp_path / ("b" * 250 + "_x2.png"))
    assert kind == "folder" and message == "its name is 257 bytes long; file names hold at most 255"


def test_a_symlinked_target_is_written_through_and_the_link_kept(tmp_path):
    # a dotfiles-managed models.toml, an output named `latest.png -> ...`: the link must survive
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "models.toml"
    real.write_text("old\n")
    link = tmp_path / "models.toml"
    link.symlink_to(real)
    atomic.write_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    dangling = tmp_path / "latest.png"
    dangling.symlink_to(tmp_path / "real" / "made.png")    # as a shell's `>` does: the target is made
    atomic.write_bytes(dangling, b"png")
    assert dangling.is_symlink() and (tmp_path / "real" / "made.png").read_bytes() == b"png"
    assert _temps(tmp_path) == [] and _temps(tmp_path / "real") == []


def test_a_fifo_or_device_target_is_written_into_never_replaced(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stdout.write(open({str(fifo)!r}).read())"],
                              stdout=subprocess.PIPE, text=True)
    try:
        atomic.write_text(fifo, "report\n")
        assert reader.communicate(timeout=30)[0] == "report\n"
    finally:
        reader.kill()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _temps(tmp_path) == []
    # /dev/null (a device; never written here: as root, a regression would replace it): no force needed
    assert atomic.target_problem("/dev/null") is None and atomic.landing("/dev/null") is None
    # /dev/stdout leads to this process's fd 1, whatever it is (under pytest: a regular capture file)
    assert atomic.landing("/dev/stdout") is None and atomic.landing("/dev/fd/2") is None


def test_writing_to_dev_stdout_appends_where_the_shell_sent_it(tmp_path):
    """`upscale ... -o /dev/stdout >> log`: the data goes after what the log held (re-opening
    /proc/self/fd/1 truncated it and started at offset 0)."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"OLD\n")
    code = "from upscale import atomic\nwith atomic.atomic_file('/dev/stdout') as f:\n    f.write(b'NEW\\n')\n"
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True)
    assert log.read_bytes() == b"OLD\nNEW\n"


def test_a_symlinked_targets_temps_are_swept_where_they_land(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "out.png"
    link.symlink_to(Path("..") / "real" / "out.png")
    dead = tmp_path / "real" / f".out.png.{atomic._host_tag()}-999999999-0123456789abcdef{atomic.TEMP_SUFFIX}"
    dead.write_bytes(b"half")
    assert atomic.sweep_temps_for(link) == [dead] and not dead.exists()


def test_where_a_symlink_leads_is_checked_before_any_work(tmp_path):
    """A symlink leading into a missing folder is refused naming where it leads; a dangling one (its
    target not there yet) needs force, as bash's noclobber would; a block device is never written."""
    nowhere = tmp_path / "links_to_nowhere.png"
    nowhere.symlink_to(tmp_path / "missing" / "x.png")
    kind, message = atomic.target_problem(nowhere)
    assert kind == "folder" and str(tmp_path / "missing") in message and "where the symlink leads" in message
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "elsewhere.png")
    kind, message = atomic.target_problem(dangling)
    assert kind == "exists" and "does not exist yet; pass force" in message
    assert atomic.target_problem(dangling, force=True) is None
    block = next((p for p in sorted(Path("/dev").glob("loop*")) if p.is_block_device()), None)
    if block is not None:
        assert atomic.target_problem(block, force=True)[1].startswith("is a block device")
