"""Vehicles commands: bulk import and export of the registry as CSV."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import msgspec

from simveb.cli.app import CLI_ACTOR, CliError, fail_cleanly, main, run, settings_of, with_runtime


@main.group("vehicles")
def vehicles_group() -> None:
    """Vehicle registry: bulk import and export (CSV, UTF-8, the columns of the export)."""


@vehicles_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--errors", "errors_path", type=click.Path(dir_okay=False), help="rejected rows (default FILE.errors.csv)"
)
@click.pass_context
@fail_cleanly
def vehicles_import(ctx: click.Context, file: str, errors_path: str | None) -> None:
    """Import vehicles from FILE.csv; bad rows go to the errors file with their reason. Re-running adds nothing."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from simveb.actors.vehicles.messages import GetImportJob, SeedVehicles, StartImport

    settings = settings_of(ctx)
    source = Path(file).resolve()
    errors = Path(errors_path).resolve() if errors_path else source.with_suffix(".errors.csv")

    async def work(runtime: Any) -> Any:
        bus = runtime.bus
        await bus.ask(SeedVehicles(only_if_empty=True))  # an empty catalogue would reject every row
        job = await bus.ask(StartImport(path=str(source), error_path=str(errors), by=CLI_ACTOR))
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task("copying", total=job.bytes_total or None)
            while job.state in ("queued", "running"):
                await asyncio.sleep(0.2)
                job = await bus.ask(GetImportJob(job_id=job.id))
                progress.update(task, description=job.phase or job.state, completed=job.bytes_read)
        return job

    job = run(with_runtime(settings, work))
    if job.state != "done":
        raise CliError(f"import failed: {job.error}")
    click.echo(
        f"{job.total_rows} row(s): {job.inserted} imported, {job.skipped} already registered, {job.rejected} rejected"
    )
    if job.rejected:
        click.echo(f"rejected rows and their reasons: {errors}")


@vehicles_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--q", help="VIN or plate prefix, or make / model / name")
@click.option("--make")
@click.option("--model")
@click.option("--status", type=click.Choice(["active", "stolen", "destroyed", "exported"]))
@click.option("--year-min", type=int)
@click.option("--year-max", type=int)
@click.pass_context
@fail_cleanly
def vehicles_export(ctx: click.Context, file: str, **filters: Any) -> None:
    """Write the vehicles matching the filters to FILE.csv (re-importable as is)."""
    from simveb.actors.vehicles.messages import OpenExport, ReadExport, VehicleFilter

    settings = settings_of(ctx)
    try:
        wanted = msgspec.convert({k: v for k, v in filters.items() if v is not None}, VehicleFilter)
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid filter: {exc}") from None

    async def work(runtime: Any, out: Any) -> int:
        export_id = await runtime.bus.ask(OpenExport(filter=wanted))
        lines = 0
        while True:
            chunk = await runtime.bus.ask(ReadExport(export_id=export_id))
            out.write(chunk.data)
            lines += chunk.data.count(b"\n")
            if chunk.done:
                return lines - 1

    with Path(file).open("wb") as out:
        written = run(with_runtime(settings, lambda runtime: work(runtime, out)))
    click.echo(f"{written} vehicle(s) written to {file}")
