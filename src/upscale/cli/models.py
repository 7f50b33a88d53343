"""`upscale models` (the registry as a table or JSON), `models pull NAME...`, `models add NAME PATH`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import EXIT_FAILURE, handle_errors, report_error, say


def _size_text(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def _spec_record(spec: Any, cached: bool) -> dict[str, Any]:
    source = {"type": spec.source_type}
    for key, value in vars(spec.source).items():
        source[key] = str(value) if isinstance(value, Path) else value
    return {"name": spec.name, "description": spec.description, "arch": spec.arch, "hparams": dict(spec.hparams),
            "scale": spec.scale, "kind": spec.kind, "twin": spec.twin, "license": spec.license,
            "bf16_safe": spec.bf16_safe, "default": spec.default, "size": spec.size, "cached": cached,
            "source": source}


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@click.pass_context
@handle_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """List the model registry: name, architecture, scale, kind, size, license, downloaded or not.

    \b
    upscale models pull esrgan        download, verify and convert now
    upscale models add mine w.pth     register a local weights file under a name
    """
    if ctx.invoked_subcommand is not None:
        return
    from .. import hub, registry

    specs = registry.all_models()
    if as_json:
        click.echo(json.dumps([_spec_record(s, hub.is_cached(s)) for s in specs], indent=2))
        return
    rows = [("NAME", "ARCH", "SCALE", "KIND", "SIZE", "LICENSE", "CACHED")]
    for spec in specs:
        cached = {"package": "packaged", "file": "local"}.get(spec.source_type, "yes" if hub.is_cached(spec) else "no")
        rows.append((spec.name, spec.arch, f"x{spec.scale}", spec.kind, _size_text(spec.size), spec.license, cached))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@models.command()
@click.argument("names", nargs=-1, required=True)
@handle_errors
def pull(names: tuple[str, ...]) -> None:
    """Download, verify (sha256) and convert the named models now, so later runs need no network;
    a model already here has its cached file checked in full (converted again if it changed)."""
    from .. import hub, registry

    failed = 0
    for name in names:
        try:
            path = hub.weights_path(registry.get_model(name), rehash=True)   # a cached file read in full
        except Exception as err:  # noqa: BLE001 - report each model, then exit with the failure code
            if len(names) == 1:
                raise
            report_error(err)
            failed += 1
            continue
        say(f"{name}: {path}")
    if failed:
        sys.exit(EXIT_FAILURE)


@models.command()
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--description", default=None, help="One line about the model.")
@click.option("--license", "license_", default="unknown", show_default=True)
@click.option("--kind", type=click.Choice(["psnr", "gan", "other"]), default="other", show_default=True)
@click.option("--twin", default=None, help="Name of its PSNR/GAN twin (for --alpha).")
@click.option("--bf16-safe", is_flag=True,
              help="You measured its fp32 and bf16 outputs >= 50 dB apart on natural images "
                   "(benchmarks/bf16_check.py): --precision auto may then run it in bf16. Without it, fp32.")
@click.option("--replace", is_flag=True,
              help="NAME is registered already: register PATH in its place (e.g. after the file changed).")
@handle_errors
def add(name: str, path: Path, description: str | None, license_: str, kind: str, twin: str | None,
        bf16_safe: bool, replace: bool) -> None:
    """Register the weights file PATH as model NAME in your user registry (`-m NAME` then works)."""
    from .. import loading, registry

    model = loading.load_model(path)  # it must load strictly before it is registered
    spec = registry.add_user_model(name, path, arch=model.arch, hparams=model.hparams, description=description,
                                   license=license_, kind=kind, twin=twin, bf16_safe=bf16_safe,
                                   replace=replace)
    say(f"added {spec.name}: {model.arch} x{spec.scale} from {spec.source.path} to "
        f"{registry.user_registry_path()}")
