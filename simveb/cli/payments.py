"""Payments commands: reconcile pending provider transactions with FedaPay and KKiaPay."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click
import msgspec

from simveb.cli.app import fail_cleanly, main, run, settings_of, with_runtime


@main.group("payments")
def payments_group() -> None:
    """Payments: reconciliation with the providers."""


@payments_group.command("reconcile")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    default=None,
    help="only transactions pending for more than this many seconds (default: payments.reconcile_after_s)",
)
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@click.pass_context
@fail_cleanly
def payments_reconcile(ctx: click.Context, older_than: int | None, as_json: bool) -> None:
    """Ask the provider about every pending transaction, settle it, and report what did not match."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simveb.actors.payments.messages import ListPendingTransactions, ReconcileTransaction

    settings = settings_of(ctx)
    age = settings.payments.reconcile_after_s if older_than is None else older_than

    async def work(runtime: Any) -> list[Any]:
        bus = runtime.bus
        ids = await bus.ask(ListPendingTransactions(older_than_s=age))
        lines = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=True, disable=as_json) as progress:
            task = progress.add_task("reconciling", total=len(ids))
            for tid in ids:
                lines.append(await bus.ask(ReconcileTransaction(transaction_id=tid, by="cli:reconcile")))
                progress.advance(task)
        return lines

    lines = run(with_runtime(settings, work))
    unmatched = [x for x in lines if not x.matched]
    if as_json:
        report = {"checked": len(lines), "unmatched": [msgspec.to_builtins(x) for x in unmatched]}
        click.echo(json.dumps({**report, "lines": [msgspec.to_builtins(x) for x in lines]}, default=str))
        return
    outcomes = Counter(x.note for x in lines)
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "nothing pending"
    click.echo(f"{len(lines)} pending transaction(s) older than {age} s checked: {summary}")
    if unmatched:
        click.echo(f"{len(unmatched)} did not match:")
        for x in unmatched:
            click.echo(
                f"  {x.transaction_id} payment {x.payment_id} {x.provider} {x.provider_ref or '-'}:"
                f" provider says {x.provider_status or '?'}, {x.note}"
            )
