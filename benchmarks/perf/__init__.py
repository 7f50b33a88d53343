"""The sub-commands of ``benchmarks/perf_cpu.py``, one module each (compare, tiling, rss,
compile_cache, seams), and what they share: the inputs and models (inputs.py), child processes
(procs.py), FLOP counts and peaks (flops.py), and the per-tile runners timed side by side
(runners.py). Each sub-command module has ``run(args, workdir) -> dict`` of its figures."""
