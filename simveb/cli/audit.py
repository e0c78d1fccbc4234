"""Audit commands: `simveb audit verify` walks every actor's hash chain and names the first broken link.

The chains are the actors' own tables, so each actor walks its own (the `VerifyAudit` message of
`simveb.audit`, addressed to it by name); this command only asks and reports.
"""

from __future__ import annotations

import json
from typing import Any

import click
import msgspec

from simveb.cli.app import CLI_ACTOR, CliError, fail_cleanly, main, run, settings_of, with_runtime


@main.group("audit")
def audit_group() -> None:
    """Audit trail: verify the tamper-evident hash chains."""


@audit_group.command("verify")
@click.option("--actor", "actors", multiple=True, help="only this actor's chain (repeatable)")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True, help="seconds per chain")
@click.option("--json", "as_json", is_flag=True, help="the reports as JSON")
@click.pass_context
@fail_cleanly
def audit_verify(ctx: click.Context, actors: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Walk each actor's chain; print its rows and head hash; exit 1 naming the first broken link."""
    from simveb.audit import PERMISSION, VerifyAudit
    from simveb.messages import Caller

    settings = settings_of(ctx)
    caller = Caller(sub=f"{CLI_ACTOR}:audit", permissions=frozenset({PERMISSION}))

    async def work(runtime: Any) -> list[Any]:
        bus = runtime.bus
        names = bus.addressees(VerifyAudit)
        unknown = sorted(set(actors) - set(names))
        if unknown:
            raise CliError(f"no audit trail for {', '.join(unknown)} (audited: {', '.join(names)})")
        return [
            await bus.ask(VerifyAudit(to=name, caller=caller), timeout=timeout)
            for name in names
            if not actors or name in actors
        ]

    reports = run(with_runtime(settings, work))
    broken = [r for r in reports if r.broken is not None]
    if as_json:
        click.echo(json.dumps([msgspec.to_builtins(r) for r in reports]))
    else:
        for r in reports:
            state = "ok" if r.broken is None else f"BROKEN at seq {r.broken.seq}: {r.broken.problem}"
            click.echo(f"{r.chain:14} {r.rows:8} row(s)  head {r.head_seq}:{r.head_hash}  {state}")
    if broken:
        first = broken[0]
        assert first.broken is not None
        raise CliError(f"audit chain of {first.chain} broken at seq {first.broken.seq}: {first.broken.problem}")
