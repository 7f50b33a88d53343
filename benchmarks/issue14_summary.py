"""The summary of ``benchmarks/issue14_amx.sh``: issue 14's "Must show" 1-5 from the JSON files that
the driver wrote into one folder, as Markdown (``summary.md`` there, and on stdout).

    python benchmarks/issue14_summary.py OUT

Reads OUT/lscpu.txt, cpu_ceiling.json, tune_table.json, compare_x4plus.json, seams_x4plus.json,
openvino_start.json (a missing file becomes a line saying so) and says, per target, whether it was met.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from _common import fmt


def _load(folder: Path, name: str) -> Any:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def _cell(v: float | None) -> str:
    return "-" if v is None else fmt(v)


def machine(folder: Path) -> list[str]:
    text = (folder / "lscpu.txt").read_text() if (folder / "lscpu.txt").is_file() else ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16", "avx512f", "avx_vnni"))
              or f in ("avx2", "fma", "f16c")]
    family = " ".join(f"{k.strip().lower()} {fields[k].strip()}" for k in ("CPU family", "Model") if k in fields)
    return ["## Machine", "", f"- CPU: {fields.get('Model name', '?').strip()} ({family or '?'}), "
            f"{fields.get('CPU(s)', '?').strip()} CPUs; flags of interest: {' '.join(wanted) or 'none'}",
            f"- AMX: {'yes' if any(f.startswith('amx') for f in flags) else 'no'}", ""]


def ceiling(data: Any) -> tuple[list[str], float | None]:
    if data is None:
        return ["## CPU ceiling", "", "cpu_ceiling.json missing", ""], None
    lines = ["## CPU ceiling (`cpu_ceiling.py`)", "",
             "| what | bf16 GFLOP/s | fp32 GFLOP/s |", "|---|---|---|"]
    for key in ("gemm", "conv"):
        by_op: dict[str, dict[str, float]] = {}
        for r in data[key]:
            by_op.setdefault(r["op"], {})[r["dtype"]] = r["gflops"]
        lines += [f"| {op} | {_cell(v.get('bfloat16'))} | {_cell(v.get('float32'))} |" for op, v in by_op.items()]
    if not data.get("environment", {}).get("native_bf16", True):
        lines += ["", "No native bf16 on this CPU: bf16 was measured only once, emulated, and the engine runs fp32."]
    gemm = {(r["op"], r["dtype"]): r["gflops"] for r in data["gemm"]}
    return lines + [""], gemm.get(("mm 2048^3", "bfloat16"))


def tune(data: Any) -> list[str]:
    lines = ["## Must show 3: the tuner's table (`tune_table.py`)", ""]
    if data is None:
        return lines + ["tune_table.json missing", ""]
    by_model: dict[tuple[str, str | None], list[str]] = {}     # (model, precision: None in runs before it)
    for r in data["candidates"]:
        by_model.setdefault((r["model"], r.get("precision")), []).append(
            f"{r['candidate']} {fmt(r['seconds'])}{r['chosen'] and ' *'}")
    lines += ["| model | precision | candidates (s per call; * chosen) | chosen | old constants | est. 1000x750: "
              "chosen vs old | saved |", "|---|---|---|---|---|---|---|"]
    for c in data["choices"]:
        comp = "off" if c["compile_gain"] is None or c["compile_gain"] <= 0 else f"on (gain {fmt(c['compile_gain'])})"
        precision = c["key"].split(",")[0]
        cells = by_model.get((c["model"], precision)) or by_model.get((c["model"], None), [])
        key = c["key"] + {"yes": " (auto runs it)", "no": " (auto does not)"}.get(c.get("auto_runs", ""), "")
        lines.append(f"| {c['model']} | {key} | {'; '.join(cells)} | window "
                     f"{c['window']}, batch {c['batch']}, compile {comp}, {c['backend']} | window {c['old_window']}, "
                     f"compile {c['old_compile']}, torch | {fmt(c['est_1000x750_s'])} s vs "
                     f"{fmt(c['old_est_1000x750_s'])} s | {fmt(c['saved_s'])} s ({fmt(c['saved_pct'])}%) |")
    notes = [f"- {c['model']}: {c['notes']}" for c in data["choices"] if c.get("notes")]
    return lines + [""] + notes + ([""] if notes else [])


def compare(data: Any, gemm_ceiling: float | None, tune_data: Any = None) -> list[str]:
    lines = ["## Must show 1: whole command, x4plus (`perf_cpu.py compare`)", ""]
    if data is None:
        return lines + ["compare_x4plus.json missing", ""]
    threads, engine, plan = data["environment"].get("threads"), data["engine"], data["tile_plan"]
    how = f"{engine['backend']} {engine['precision']}" + (", compiled" if engine.get("compiled") else "")
    lines += [f"Input {data['input']}, {threads} threads; after tune the engine runs {how}, windows "
              f"{plan['tile']} x {plan['tiles']} (computed px / image px {fmt(plan['computed_px_ratio'])}).", "",
              "| run | seconds | peak RSS MB | PSNR vs our fp32 (dB) | load before/after |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['method']} | {fmt(r['seconds'])} | {fmt(r.get('maxrss_mb', ''))} | "
                     f"{fmt(r.get('psnr_vs_fp32_db', ''))} | {fmt(r.get('loadavg_before', ''))} / "
                     f"{fmt(r.get('loadavg_after', ''))} |")
    lines.append("")
    ours = next((r for r in data["rows"] if r["method"] == "ours CLI after upscale tune, 2nd process"), None)
    bases = [r for r in data["rows"] if r.get("short") in ("ncnn_whole", "loop_whole")]
    if ours and bases:
        for b in bases:
            x = b["seconds"] / ours["seconds"]
            lines.append(f"- ours after tune (2nd process) vs {b['method']}: **{x:.2f}x** (target >= 8x: "
                         f"{_yes(x >= 8)})")
        lines.append(f"- ours' output vs our fp32: {fmt(ours.get('psnr_vs_fp32_db'))} dB (target >= 50 dB: "
                     f"{_yes((ours.get('psnr_vs_fp32_db') or 0) >= 50)})")
    info = data["peak"]
    dtype = info.get("ceiling_dtype", "bf16")      # runs before the key existed were judged against bf16
    peak = info.get("ceiling_gemm_gflops", info["measured_bf16_gemm_gflops"])
    lines += ["", f"## Must show 2: the model part's GFLOP/s vs the {dtype} GEMM ceiling", ""]
    if dtype != "bf16" and not info.get("avx512_bf16_peak_gflops") and not info.get("amx_present"):
        lines.append(f"This CPU has no native bf16 (bf16 GEMM {info.get('measured_bf16_gemm_n', 2048)}^3, "
                     f"emulated: {fmt(info['measured_bf16_gemm_gflops'])} GFLOP/s), so the engine runs fp32 "
                     f"and is judged against the fp32 GEMM.")
    elif dtype != "bf16":
        lines.append(f"The engine runs fp32 here: `upscale tune` measured it faster than bf16 on this CPU, so it "
                     f"is judged against the fp32 GEMM; the bf16 GEMM 2048^3 measured beside it gives "
                     f"{fmt(info['measured_bf16_gemm_gflops'])} GFLOP/s (the issue's ceiling; the fraction of "
                     f"it is in brackets).")
    lines.append(f"{dtype} GEMM 2048^3 measured by compare itself: {fmt(peak)} GFLOP/s"
                 + (f" (cpu_ceiling.py: {fmt(gemm_ceiling)})" if gemm_ceiling and dtype == "bf16" else "") + ".")
    for r in data["tile_rows"]:
        if r["method"].startswith("ours"):
            frac = r.get("fraction_of_ceiling", r["fraction_of_measured_bf16_gemm"])
            of_bf16 = "" if dtype == "bf16" else f" ({r['fraction_of_measured_bf16_gemm']:.2f} of the bf16 GEMM)"
            lines.append(f"- {r['method']}: {fmt(r['median_tile_s'])} s per {data['tile_plan']['tile']} window "
                         f"(median of {r['calls']}), {fmt(r['gflops'])} GFLOP/s = **{frac:.2f}** of the ceiling"
                         f"{of_bf16} (target >= 0.75: {_yes(frac >= 0.75)})")
    lines += per_side_gflops(data, tune_data, peak)
    return lines + [""]


def per_side_gflops(data: Any, tune_data: Any, peak: float) -> list[str]:
    """The same fraction for every window side the tuner measured x4plus at on the backend the engine
    ran (best of its timed calls; GFLOP per window pixel from compare's count), so the plan's choice of a larger, less
    efficient window for fewer computed pixels is visible beside the per-window efficiency."""
    if tune_data is None or not data.get("gflop_per_tile"):
        return []
    th, tw = data["tile_plan"]["tile"]
    per_px = data["gflop_per_tile"] / (th * tw)
    backend = data["engine"]["backend"]      # the per-side curve of the backend and precision the engine ran
    precision = {"float32": "fp32", "bfloat16": "bf16"}.get(data["engine"]["precision"])
    rows = [c for c in tune_data["candidates"] if c["model"] == "x4plus" and c["candidate"].startswith("window")
            and c.get("precision", precision) == precision
            and _candidate_backend(c["candidate"]) == backend
            and "batch" not in c["candidate"] and "compiled" not in c["candidate"]]
    if not rows:
        return []
    out = ["", f"Per window side, from the tuner's {backend} {precision} probes of x4plus (`tune_table.py`; best of "
           "its calls):", "",
           "| window | s per window | GFLOP/s | of the ceiling |", "|---|---|---|---|"]
    for c in rows:
        side = int(c["candidate"].split()[1])
        gflops = side * side * per_px / c["seconds"]
        out.append(f"| {side} | {fmt(c['seconds'])} | {fmt(gflops)} | {gflops / peak:.2f} |")
    return out


def _candidate_backend(candidate: str) -> str:
    """The backend of a tuner candidate ("window 256 winograd", "window 256": torch)."""
    last = candidate.split()[-1]
    return last if last in ("openvino", "winograd") else "torch"


def seams(data: Any) -> list[str]:
    lines = ["## Must show 4: `--tile 96` / `128` vs the default, x4plus, 256x256 crop (`seams_real.py`)", ""]
    if data is None:
        return lines + ["seams_x4plus.json missing", ""]
    lines += ["| tile (core) | windows | window | backend, precision | PSNR vs untiled (dB) | seconds | x default | "
              "targets |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        ok = None
        if r["tile_px"].split()[0] in ("96", "128"):
            ok = (r["x_default"] or 99) <= 3 and r["psnr_vs_untiled_db"] >= 45
        lines.append(f"| {r['tile_px']} | {r['windows']} | {r['window']} | {r['backend']}, {r['precision']} | "
                     f"{fmt(r['psnr_vs_untiled_db'])} | {fmt(r['seconds'])} | {fmt(r['x_default'])} | {_yes(ok)} |")
    return lines + ["", f"({data['environment'].get('crop', '')}, precision {data['environment'].get('precision')})",
                    ""]


def openvino(data: Any) -> list[str]:
    lines = ["## Must show 5: second process with `--backend openvino` (`openvino_start.py`)", ""]
    if data is None:
        return lines + ["openvino_start.json missing", ""]
    lines += ["| process | backend | whole command s | converted here |", "|---|---|---|---|"]
    lines += [f"| {r['process']} | {r['backend']} | {fmt(r['whole_command_s'])} | {r['converted']} |"
              for r in data["start"]]
    first = next((r for r in data["start"] if "process 1" in r["process"]), None)
    second = next((r for r in data["start"] if "process 2" in r["process"]), None)
    if first and second:
        lines += ["", f"2nd process / 1st: {second['whole_command_s'] / first['whole_command_s']:.2f} "
                  f"({data.get('model', '')}, {data.get('image', '')})"]
    if data.get("windows"):
        lines += ["", "One window side by side:", ""]
        lines += [f"- {r['net']} {r.get('backend', '')} {r.get('window', '')}: {fmt(r.get('window_s', ''))} s, "
                  f"{fmt(r.get('psnr_vs_torch_fp32_db', ''))} dB vs torch fp32" for r in data["windows"]]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    ceiling_lines, gemm = ceiling(_load(folder, "cpu_ceiling.json"))
    parts = [["# Issue 14 on this machine", ""], machine(folder), ceiling_lines,
             compare(_load(folder, "compare_x4plus.json"), gemm, _load(folder, "tune_table.json")),
             tune(_load(folder, "tune_table.json")),
             seams(_load(folder, "seams_x4plus.json")), openvino(_load(folder, "openvino_start.json"))]
    times = folder / "times.txt"
    if times.is_file():
        parts.append(["## Step times (s)", "", "```", times.read_text().rstrip(), "```", ""])
    text = "\n".join(line for part in parts for line in part)
    (folder / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
