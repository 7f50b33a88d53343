"""Folders of images: discovery, sharding, output naming, skip/resume and a pipelined run.

    plan = plan_batch(in_dir, out_dir, outscale=4.0)        # what to do, what to skip (no model needed)
    work = planned_work(plan)                                # what the engine will see (for compile)
    summary = run_batch(plan, upscaler, BatchSettings(...))  # decode | model | encode, overlapped
    write_report(summary, "report.json")

Output naming is the single command's rule applied under ``out_dir``: ``sub/cat.jpg`` becomes
``out_dir/sub/cat_x4.jpg`` (``api.default_output_path``). A complete output that exists is skipped
(the resume rule); temp files left by killed runs are removed while planning (only those of
processes that no longer run, so concurrent batches into one folder leave each other alone).

Rooms: ``plan`` (discovery, shards, naming, resume, checks before the model loads), ``outputs`` (which
input owns each output, and outputs that would overwrite an input; `upscale a.png b.png` uses it too), ``journal``
(what made each output, so a rerun with other settings redoes it), ``pipeline``
(the threads), ``summary`` (outcomes, the summary and the JSON report). Nothing here prints;
outcomes come back as data and through the ``on_outcome``/``on_tiles`` callbacks.
"""

from __future__ import annotations

from .journal import JOURNAL_NAME, Journal, settings_key
from .pipeline import BatchSettings, OnOutcome, OnTiles, run_batch
from .plan import (IMAGE_EXTENSIONS, LAUNCHERS, Job, Plan, check_folders, check_report_path, find_images,
                   parse_shard, plan_batch, planned_work, shard_from_environment, shard_of)
from .summary import DONE, FAILED, NOT_STARTED, SKIPPED, BatchSummary, Outcome, reason_for, write_report

__all__ = ["JOURNAL_NAME", "Journal", "settings_key", "BatchSettings", "OnOutcome", "OnTiles", "run_batch", "IMAGE_EXTENSIONS", "LAUNCHERS", "Job", "Plan",
           "check_folders", "check_report_path", "find_images", "parse_shard", "plan_batch", "planned_work",
           "shard_from_environment", "shard_of", "DONE", "FAILED", "NOT_STARTED", "SKIPPED", "BatchSummary", "Outcome",
           "reason_for", "write_report"]
