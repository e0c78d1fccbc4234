"""A real server for the contract test: the application (owning its runtime, seeded, simulators mounted)
served by uvicorn on a free port in a thread, and real signed-in users of three roles.

The citizen, the agent and the admin are created through the users and auth services and sign in
over HTTP as a frontend does (the admin with the TOTP second factor), so the tokens are the ones
production issues. `python -m tests.contract_support` serves it and prints the tokens, to run the
schemathesis CLI against by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pyotp
import uvicorn

from simveb.actors.auth.messages import SetPassword
from simveb.actors.users.messages import SYSTEM, CreateUser
from simveb.config import Settings, with_overrides
from simveb.http.app import create_app

PASSWORD = "contract test passphrase"
_numbers = itertools.count(30_000_000)


class Server(msgspec.Struct):
    """A served application: its base URL, the app (its runtime in `app.state`) and its event loop."""

    url: str
    app: Any
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop (the runtime's pool belongs to it) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[Server]:
    """Serve create_app(settings) (its own runtime, seeded when empty) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The simulators' URLs are paths of this server: resolved from its host and port.
    settings = with_overrides(settings, server={"host": "127.0.0.1", "port": port, "sandbox": True})
    app = create_app(settings)
    loops: list[asyncio.AbstractEventLoop] = []
    app.on_startup.append(lambda: loops.append(asyncio.get_running_loop()))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"contract:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the contract server did not start")
        time.sleep(0.02)
    try:
        yield Server(url=f"http://127.0.0.1:{port}", app=app, loop=loops[0])
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def make_account(server: Server, role: str) -> dict[str, Any]:
    """An active account of `role` with a password, created as an admin would."""
    n = next(_numbers)
    fields: dict[str, Any] = {"phone": f"+22901{n:08d}"}
    if role == "citizen":
        kind = "person"
        fields |= {"npi": f"{n:010d}", "last_name": "Dossou", "first_name": "Afi"}
    else:
        kind = "staff"
        fields["email"] = f"contract{n}@example.bj"
    runtime = server.app.state.runtime

    async def create() -> Any:
        user = await runtime.bus.ask(CreateUser(caller=SYSTEM, kind=kind, roles=[role], **fields))
        await runtime.bus.ask(SetPassword(user_id=user.id, password=PASSWORD, by="contract-test"))
        return user

    user = server.run(create())
    return {"id": str(user.id), **fields}


def sign_in(server: Server, role: str) -> str:
    """An access token of a new `role` account, signed in over HTTP (TOTP set up and proved when required)."""
    account = make_account(server, role)
    ident = {"email": account["email"]} if "email" in account else {"phone": account["phone"]}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/api/auth/login", json={**ident, "password": PASSWORD})
        r.raise_for_status()
        tokens = r.json()["tokens"]
        if not tokens["limited"]:
            return tokens["access_token"]
        # A role that needs a second factor: set TOTP up with the limited session, then sign in again.
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        setup = c.post("/api/auth/2fa/setup", headers=bearer)
        setup.raise_for_status()
        totp = pyotp.TOTP(setup.json()["secret"])
        c.post(
            "/api/auth/2fa/enable", json={"code": totp.now(), "password": PASSWORD}, headers=bearer
        ).raise_for_status()
        challenge = c.post("/api/auth/login", json={**ident, "password": PASSWORD}).json()["challenge"]["challenge_id"]
        r = c.post("/api/auth/verify-otp", json={"challenge_id": challenge, "code": totp.at(time.time() + 30)})
        r.raise_for_status()
        return r.json()["tokens"]["access_token"]


if __name__ == "__main__":  # serve and print the tokens: `python -m tests.contract_support DATABASE_URL`
    import sys
    import tempfile

    from simveb import migrate

    url = sys.argv[1]
    asyncio.run(migrate.migrate(url))
    base = with_overrides(
        Settings(),
        server={"data_dir": tempfile.mkdtemp(), "env": "development", "log_level": "WARNING"},
        database={"url": url, "migrate_on_start": False},
        ratelimit={"per_minute": 1_000_000},
    )
    with serve(base) as srv:
        print("URL", srv.url, flush=True)
        for role in ("citizen", "agent", "admin"):
            print("TOKEN", role, sign_in(srv, role), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
