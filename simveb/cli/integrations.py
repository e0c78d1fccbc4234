"""Integrations commands: the state of the external registries (X-Road)."""

from __future__ import annotations

import click
import msgspec

from simveb.cli.app import fail_cleanly, main, run, settings_of, with_runtime


@main.group()
def integrations() -> None:
    """National registries (ANIP, DGI) over X-Road."""


@integrations.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
@click.pass_context
@fail_cleanly
def integrations_status(ctx: click.Context, as_json: bool) -> None:
    """Per registry: recent calls, error rate, latency p50/p95, queued lookups, last breaker change."""
    from simveb.actors.integrations.messages import GetIntegrationsStatus

    settings = settings_of(ctx)
    status = run(with_runtime(settings, lambda rt: rt.bus.ask(GetIntegrationsStatus())))
    if as_json:
        click.echo(msgspec.json.encode(status).decode())
        return
    window = status.services[0].window_s if status.services else 0
    click.echo(f"last {window:g} s        calls  errors  error%  p50 ms  p95 ms  queued  abandoned")
    for s in status.services:
        p50 = f"{s.p50_ms:.0f}" if s.p50_ms is not None else "-"
        p95 = f"{s.p95_ms:.0f}" if s.p95_ms is not None else "-"
        click.echo(
            f"{s.service:<16} {s.calls:>6}  {s.errors:>6}  {s.error_rate * 100:>5.1f}  {p50:>6}  {p95:>6}"
            f"  {s.queued:>6}  {s.abandoned:>9}"
        )
        # The breaker lives in each serving process; this command sees what they recorded.
        change = s.last_change
        if change is None:
            click.echo("  breaker: no state change recorded (closed)")
        else:
            click.echo(
                f"  breaker: {change.to_state} since {change.at:%Y-%m-%d %H:%M:%S %Z}"
                f" (from {change.from_state}, seen by {change.process})"
            )
