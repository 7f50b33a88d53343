"""Commands that compute nothing answer without importing torch (~1.5 s of start-up): listing and
showing models, `tune --show`, every sub-command's --help, and the refusals `upscale run` makes
before it loads a model (a missing input, an existing output, bad options, a Hub model offline). Each runs in a fresh interpreter, which reports whether torch was imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

PROBE = """
import json, sys
from upscale.cli import main
sys.argv = ["upscale", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as done:
    code = done.code
else:
    code = 0
print("\\n" + json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def run_fresh(args: list[str], cwd: Path) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stderr) of ``upscale ARGS`` in a new interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    *said, last = done.stderr.rstrip("\n").split("\n")
    outcome = json.loads(last)
    return outcome["code"], outcome["torch"], "\n".join(said)


@pytest.mark.parametrize("args", [["models"], ["models", "show", "default-x4"], ["tune", "--show"],
                                  ["--help"], ["run", "--help"], ["batch", "--help"], ["tune", "--help"],
                                  ["train", "--help"], ["bench", "--help"], ["interp", "--help"]])
def test_listing_and_help_do_not_import_torch(tmp_path, args):
    code, torch_loaded, said = run_fresh(args, tmp_path)
    assert code in (0, None), said
    assert not torch_loaded


@pytest.mark.parametrize("args, said", [
    (["missing.jpg"], "missing.jpg: file not found"),
    (["a.png", "-o", "b.png"], "exists already; pass --force"),
    (["a.png", "-s", "-2"], "--scale must be a number > 0"),
    (["a.png", "--name", "{nope}"], "unknown field {nope}"),
    (["a.png", "-m", "esrgan", "-o", "c.png"], "offline: model 'esrgan' needs"),
])
def test_refusals_before_a_model_loads_do_not_import_torch(tmp_path, monkeypatch, args, said):
    """What `upscale run` refuses before it loads a model is said in a fraction of a second."""
    monkeypatch.setenv("UPSCALE_CACHE", str(tmp_path / "cache"))      # no weights cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"kept")
    code, torch_loaded, text = run_fresh(args, tmp_path)
    assert code in (1, 2) and said in text, text
    assert not torch_loaded and (tmp_path / "b.png").read_bytes() == b"kept"


def test_the_probe_sees_torch_where_a_command_computes(tmp_path):
    """The check above can fail: a command that upscales imports torch, and the probe says so."""
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    code, torch_loaded, said = run_fresh(["a.png", "-m", "srcnn-x2", "-q", "--threads", "1"], tmp_path)
    assert code in (0, None), said
    assert torch_loaded and (tmp_path / "a_x2.png").is_file()
