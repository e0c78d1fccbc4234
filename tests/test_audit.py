"""The audit trail, attacked: someone with SQL access to an actor's schema edits, deletes or forges
entries, and `simveb audit verify` (a real process) names the first broken link and exits non-zero.
Also: appends from many concurrent transactions keep one valid, gap-free chain; a rolled-back
append leaves nothing; the append-only trigger refuses edits made through any ordinary code path.

The chain used is config's: its PutSetting writes one audit entry per change, through the actor.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from simveb import audit
from simveb.actors.config.messages import PutSetting
from simveb.messages import Caller
from simveb.runtime import Runtime
from tests.support import simveb


async def changes(runtime: Runtime, n: int) -> None:
    """n audited changes through the config actor (seq 1..n of its chain)."""
    assert runtime.bus is not None
    for i in range(n):
        await runtime.bus.ask(
            PutSetting(key="audit.test_value", value=i, type="integer" if i == 0 else None, by=f"admin-{i}")
        )


async def sql(runtime: Runtime, *statements: str, args: tuple[object, ...] = ()) -> None:
    """The attacker: owner rights on the schema, so the append-only trigger is switched off first."""
    assert runtime.db is not None
    async with runtime.db.transaction() as con:
        await con.execute("ALTER TABLE config.audit DISABLE TRIGGER audit_append_only")
        for s in statements:
            await con.execute(s, *args)
        await con.execute("ALTER TABLE config.audit ENABLE TRIGGER audit_append_only")


def verify(runtime: Runtime, *extra: str) -> tuple[int, str, str]:
    done = simveb(runtime.settings, "audit", "verify", *extra)
    return done.returncode, done.stdout, done.stderr


async def test_an_intact_trail_verifies_and_lists_every_audited_actor(runtime: Runtime) -> None:
    await changes(runtime, 3)
    code, out, err = await asyncio.to_thread(verify, runtime)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"auth", "config", "documents", "payments", "registrations", "users", "vehicles"}
    assert "3 row(s)" in lines["config"] and lines["config"].endswith("ok")
    async with runtime.db.connection() as con:  # type: ignore[union-attr]
        head = await con.fetchval("SELECT hash FROM config.audit WHERE seq = 3")
    assert f"head 3:{head}" in lines["config"]


async def test_a_planted_edit_is_named_and_verify_fails(runtime: Runtime) -> None:
    await changes(runtime, 4)
    # The attacker rewrites who made change 2 and what it was.
    await sql(
        runtime,
        "UPDATE config.audit SET actor = 'someone-else', detail = jsonb_set(detail, '{new,value}', '999') WHERE seq = 2",
    )
    code, out, err = await asyncio.to_thread(verify, runtime)
    assert code == 1
    assert "audit chain of config broken at seq 2" in err and "hash does not match the row's content" in err
    assert "BROKEN at seq 2" in next(line for line in out.splitlines() if line.startswith("config"))
    # The other chains are untouched and say so.
    assert next(line for line in out.splitlines() if line.startswith("users")).endswith("ok")


async def test_a_deleted_row_is_named(runtime: Runtime) -> None:
    await changes(runtime, 4)
    await sql(runtime, "DELETE FROM config.audit WHERE seq = 2")
    code, _out, err = await asyncio.to_thread(verify, runtime, "--actor", "config")
    assert code == 1
    assert "broken at seq 3: seq 2 missing (deleted)" in err


async def test_a_rehashed_forged_row_breaks_the_link_to_the_next_one(runtime: Runtime) -> None:
    await changes(runtime, 4)
    assert runtime.db is not None
    async with runtime.db.connection() as con:
        row = await con.fetchrow("SELECT * FROM config.audit WHERE seq = 2")
    # The attacker knows the algorithm: the forged row carries a hash that matches its new content.
    forged_detail = {**row["detail"], "new": {**row["detail"]["new"], "value": 999}}
    forged_hash = audit.row_hash(
        "config", 2, row["at"], row["actor"], row["subject"], row["action"], forged_detail, row["request_id"],
        row["prev_hash"],
    )  # fmt: skip
    await sql(
        runtime,
        "UPDATE config.audit SET detail = $1::text::jsonb, hash = $2 WHERE seq = 2",
        args=(json.dumps(forged_detail), forged_hash),
    )
    code, _out, err = await asyncio.to_thread(verify, runtime, "--actor", "config")
    assert code == 1
    assert "broken at seq 3: prev_hash" in err and "does not link to the hash of seq 2" in err


async def test_a_deleted_tail_is_named_by_the_head(runtime: Runtime) -> None:
    await changes(runtime, 3)
    await sql(runtime, "DELETE FROM config.audit WHERE seq = 3")
    code, _out, err = await asyncio.to_thread(verify, runtime, "--actor", "config")
    assert code == 1
    assert "broken at seq 3: the head is at seq 3 but the last row is seq 2: tail deleted" in err


async def test_a_row_copied_from_another_chain_does_not_verify(runtime: Runtime) -> None:
    """The chain's name is hashed: a valid row of one actor is not a valid row of another."""
    assert runtime.db is not None
    async with runtime.db.transaction() as con:
        await audit.append(con, "users", actor="admin", subject="x", action="roles_changed", detail={"new": ["admin"]})
    async with runtime.db.transaction() as con:
        await con.execute("INSERT INTO config.audit SELECT * FROM users.audit")
        await con.execute("INSERT INTO config.audit_head (seq, hash) SELECT seq, hash FROM users.audit_head")
        report = await audit.verify(con, "config")
    assert report.broken is not None and report.broken.seq == 1
    assert "hash does not match" in report.broken.problem


async def test_the_trail_refuses_updates_and_deletes_from_code(runtime: Runtime) -> None:
    await changes(runtime, 1)
    assert runtime.db is not None
    for statement in ("UPDATE config.audit SET actor = 'x'", "DELETE FROM config.audit"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            async with runtime.db.transaction() as con:
                await con.execute(statement)


async def test_concurrent_appends_keep_one_gap_free_valid_chain(runtime: Runtime) -> None:
    assert runtime.db is not None
    db = runtime.db

    async def one(i: int) -> int:
        async with db.transaction() as con:
            seq = await audit.append(con, "payments", actor=f"agent-{i}", subject=uuid.uuid4(), action="t")
            await asyncio.sleep(0.001 * (i % 3))  # hold the head a little, as a real handler does
            return seq

    seqs = await asyncio.gather(*(one(i) for i in range(40)))
    assert sorted(seqs) == list(range(1, 41))
    async with db.connection() as con:
        report = await audit.verify(con, "payments")
    assert report.broken is None and report.rows == 40 and report.head_seq == 40


async def test_a_rolled_back_append_leaves_no_entry_and_no_gap(runtime: Runtime) -> None:
    assert runtime.db is not None
    with pytest.raises(RuntimeError, match="the state change failed"):
        async with runtime.db.transaction() as con:
            await audit.append(con, "vehicles", actor="a", subject="v", action="status_changed")
            raise RuntimeError("the state change failed")
    async with runtime.db.transaction() as con:
        assert await audit.append(con, "vehicles", actor="a", subject="v", action="status_changed") == 1
        report = await audit.verify(con, "vehicles")
    assert report.broken is None and report.rows == 1


async def test_a_detail_jsonb_rewrites_still_verifies(runtime: Runtime) -> None:
    """jsonb keeps neither key order, nor spacing, nor a float's exponent: the hash covers the value
    as jsonb returns it, so honest rows never look edited."""
    assert runtime.db is not None
    odd = {"z": 1, "a": [1.5, 1e20, -0.0, "é\u2028"], "n": None, "nested": {"b": True, "a": 2**40}}
    async with runtime.db.transaction() as con:
        await audit.append(con, "documents", actor="a", subject="d", action="x", detail=odd)
        await audit.append(con, "documents", actor="a", subject="d", action="y", detail={"id": uuid.uuid4()})
    async with runtime.db.connection() as con:
        report = await audit.verify(con, "documents")
    assert report.broken is None and report.rows == 2


async def test_append_refuses_to_run_outside_a_transaction(runtime: Runtime) -> None:
    assert runtime.db is not None
    async with runtime.db.connection() as con:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await audit.append(con, "config", actor="a", subject="s", action="x")


async def test_verify_and_list_need_audit_read(runtime: Runtime) -> None:
    from simveb.errors import Forbidden

    assert runtime.bus is not None
    nobody = Caller(sub="someone", permissions=frozenset({"config:write"}))
    with pytest.raises(Forbidden):
        await runtime.bus.ask(audit.VerifyAudit(to="config", caller=nobody))
    with pytest.raises(Forbidden):
        await runtime.bus.ask(audit.ListAudit(to="config", caller=nobody))


async def test_a_nul_in_a_filter_is_refused_not_a_crash(runtime: Runtime) -> None:
    """PostgreSQL refuses NUL in text: asked directly (not through the route's pattern), the actor
    answers 400 instead of crashing."""
    from simveb.errors import BadRequest

    assert runtime.bus is not None
    reader = Caller(sub="cli:audit", permissions=frozenset({audit.PERMISSION}))
    with pytest.raises(BadRequest):
        await runtime.bus.ask(audit.ListAudit(to="config", caller=reader, filter=audit.AuditFilter(subject="a\x00")))
    page = await runtime.bus.ask(audit.ListAudit(to="config", caller=reader, filter=audit.AuditFilter(subject="a")))
    assert page.items == [] and page.next_cursor is None
