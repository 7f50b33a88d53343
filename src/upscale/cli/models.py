"""`upscale models` (the registry as a table or JSON), `models show NAME`, `models pull NAME...`,
`models add NAME PATH`, `models remove NAME`."""

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
    upscale models show esrgan        one model in full: source, hashes, where its file is
    upscale models pull esrgan        download, verify and convert now
    upscale models add mine w.pth     register a local weights file under a name
    upscale models remove mine        unregister it (the file stays)
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
        here = hub.is_cached(spec)      # a local file moved or deleted since `models add` shows as missing
        cached = {"package": "packaged", "file": "local" if here else "missing"}.get(spec.source_type,
                                                                                       "yes" if here else "no")
        license_ = spec.license.split(";")[0].strip()    # the license; the notes after it are in --json
        rows.append((spec.name, spec.arch, f"x{spec.scale}", spec.kind, _size_text(spec.size), license_, cached))
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
    from .. import errors, loading, registry, user_registry
    from ..resolve import NCNN_SUFFIX

    if path.suffix.lower() == NCNN_SUFFIX:   # the registry records one file; an ncnn model is two
        converted = path.with_suffix(".safetensors")
        raise errors.UsageError(f"an ncnn model is registered once converted: `upscale convert {path} {converted}`, "
                                f"then `upscale models add {name} {converted}`", path=path)
    model = loading.load_model(path)  # it must load strictly before it is registered
    spec = user_registry.add_user_model(name, path, arch=model.arch, hparams=model.hparams,
                                        description=description, license=license_, kind=kind, twin=twin,
                                        bf16_safe=bf16_safe, replace=replace)
    say(f"added {spec.name}: {model.arch} x{spec.scale} from {spec.source.path} to "
        f"{registry.user_registry_path()}")


@models.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the model's record as JSON.")
@handle_errors
def show(name: str, as_json: bool) -> None:
    """Everything the registry says about model NAME, and where its weights file is (or would be)."""
    from .. import hub, registry

    spec = registry.get_model(name)
    record = _spec_record(spec, hub.is_cached(spec))
    record["registry"] = spec.origin
    record["file"] = str(hub.local_path(spec))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for key, value in record.items():
        if value is None:           # an optional field not set (twin)
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "(family defaults)"
        say(f"{key}: {value}")


@models.command()
@click.argument("name")
@handle_errors
def remove(name: str) -> None:
    """Unregister the user model NAME (added with `models add`); its weights file is left where it is."""
    from .. import user_registry

    spec = user_registry.remove_user_model(name)
    say(f"removed {spec.name} (its file {spec.source.path} is kept) from {spec.origin}")
