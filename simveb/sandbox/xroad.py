"""X-Road security server SIMULATOR: answers ANIP citizen and DGI company lookups with fake people.

This is not ANIP, not DGI and not X-Road: it is a stand-in, served under /sandbox/xroad, that speaks
the X-Road REST protocol (`GET /r1/{INSTANCE}/{CLASS}/{MEMBER}/{SUBSYSTEM}/{SERVICE}[/path]`) so the
integrations client can be run and tested here. The record field names (French) are this project's
assumption of the registries' formats.

- The service is recognised by its query parameter: `?npi=` (ANIP citizen) or `?ifu=` (DGI company).
- Every answer is derived from the identifier (seeded random), so the same id always gives the same
  fake person or company. Identifiers ending in `00` are unknown (404), ending in `01` get an empty
  200 answer (the other way registries say "nothing").
- `X-Road-Client` must be `INSTANCE/CLASS/MEMBER/SUBSYSTEM`, or the simulator answers as a security
  server would: an `X-Road-Error: Client.InvalidClientIdentifier` error.
- `POST /sandbox/xroad/_control {"mode", "delay_ms", "times", "service", "error_type"}` makes it slow,
  fail (500), answer garbage (malformed JSON) or answer an X-Road error, for the next `times` calls
  (or until told otherwise), for one service or both; `GET` returns the behaviour, the call counts
  and the X-Road headers of the last call per service; `POST /sandbox/xroad/_reset` forgets it all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from datetime import date, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post

Mode = Literal["normal", "slow", "error", "garbage", "xroad_error"]
ServiceName = Literal["anip", "dgi"]
DEFAULT_SLOW_MS = 3000

LAST_NAMES = [
    "AHOUANSOU", "GBAGUIDI", "HOUNSOU", "AGOSSOU", "ZINSOU", "HOUNGBEDJI", "KOUTON", "DJOSSOU", "ASSOGBA",
    "ADJOVI", "DOSSOU", "KPADONOU", "AKPLOGAN", "HOUNKPATIN", "AGBODJAN", "SANNI", "CHABI", "GOUNOU", "BIO",
    "ORO", "ADECHINA", "TOKO", "SOSSOU", "AMOUSSOU", "TCHIBOZO", "LALEYE", "OKE", "BOKO", "YAROU", "SABI",
]  # fmt: skip
FIRST_NAMES = {
    "M": ["Koffi", "Codjo", "Comlan", "Dossa", "Sourou", "Mahougnon", "Rodrigue", "Gildas", "Florent",
          "Ismaël", "Abdoulaye", "Sèna", "Gbènou", "Yacoubou", "Orou", "Dieudonné", "Romaric", "Fiacre"],
    "F": ["Afiavi", "Ablawa", "Houéfa", "Nafissatou", "Mariam", "Gisèle", "Rosine", "Bernadette", "Yabo",
          "Adjoa", "Sènami", "Fifamè", "Chantal", "Ramatou", "Edwige", "Blandine", "Mahouna", "Irène"],
}  # fmt: skip
CITIES = [
    "Cotonou", "Porto-Novo", "Abomey-Calavi", "Parakou", "Djougou", "Bohicon", "Natitingou", "Lokossa",
    "Ouidah", "Abomey", "Kandi", "Savalou", "Pobè", "Malanville", "Comè", "Allada", "Dassa-Zoumè",
]  # fmt: skip
# Quarters of Cotonou; an address elsewhere is the town alone.
QUARTERS = ["Ganhi", "Akpakpa", "Cadjèhoun", "Fidjrossè", "Zogbo", "Gbégamey", "Houéyiho", "Agla", "Sikècodji"]
TRADES = ["TRANSPORT", "AUTO", "LOGISTIQUE", "COMMERCE GENERAL", "BTP", "AGRO-INDUSTRIE", "SERVICES", "IMPORT-EXPORT"]
FORMS = ["SARL", "SA", "SAS", "ETS", "SARLU"]
CITY_CODES = {"Cotonou": "COT", "Porto-Novo": "PNO", "Parakou": "PKO", "Abomey-Calavi": "ABC", "Bohicon": "BOH"}


@dataclasses.dataclass
class Behaviour:
    mode: Mode = "normal"
    delay_ms: int = 0
    times: int | None = None  # how many more calls behave so; None = until told otherwise
    error_type: str = "Server.ServerProxy.ServiceFailed"


@dataclasses.dataclass
class SimulatorState:
    behaviours: dict[str, Behaviour] = dataclasses.field(
        default_factory=lambda: {"anip": Behaviour(), "dgi": Behaviour()}
    )
    calls: dict[str, int] = dataclasses.field(default_factory=lambda: {"anip": 0, "dgi": 0})
    last: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


STATE = SimulatorState()


class ControlIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    mode: Mode = "normal"
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=120_000)] = 0
    times: Annotated[int, msgspec.Meta(ge=1)] | None = None
    service: ServiceName | None = None  # None: both
    error_type: Annotated[str, msgspec.Meta(min_length=1, max_length=120)] = "Server.ServerProxy.ServiceFailed"


def _control_view() -> dict[str, Any]:
    return {
        "simulator": "X-Road security server simulator",
        "behaviours": {k: dataclasses.asdict(v) for k, v in STATE.behaviours.items()},
        "calls": dict(STATE.calls),
        "last": STATE.last,
    }


@get("/xroad/_control", sync_to_thread=False)
def control_state() -> dict[str, Any]:
    """The simulator's behaviour, call counts and the X-Road headers of the last call per service."""
    return _control_view()


@post("/xroad/_control", status_code=200, sync_to_thread=False)
def control(data: ControlIn) -> dict[str, Any]:
    """Tell the simulator how to behave for the next calls (one service or both)."""
    delay = data.delay_ms or (DEFAULT_SLOW_MS if data.mode == "slow" else 0)
    for name in [data.service] if data.service else ["anip", "dgi"]:
        STATE.behaviours[name] = Behaviour(mode=data.mode, delay_ms=delay, times=data.times, error_type=data.error_type)
    return _control_view()


@post("/xroad/_reset", status_code=200, sync_to_thread=False)
def reset() -> dict[str, Any]:
    """Back to normal behaviour, counters at zero."""
    STATE.behaviours = {"anip": Behaviour(), "dgi": Behaviour()}
    STATE.calls = {"anip": 0, "dgi": 0}
    STATE.last = {}
    return _control_view()


def _xroad_error(status: int, error_type: str, message: str) -> Response[Any]:
    """An error raised by the security server itself: the X-Road-Error header and a JSON body."""
    return Response(
        {"type": error_type, "message": message, "detail": str(uuid.uuid4())},
        status_code=status,
        headers={"X-Road-Error": error_type},
        media_type="application/json",
    )


@get("/xroad/r1/{service_path:path}")
async def xroad_rest(request: Request[Any, Any, Any], service_path: str) -> Response[Any]:
    """Answer an X-Road REST call for ANIP (?npi=) or DGI (?ifu=) as the simulator is told to."""
    parts = [p for p in service_path.split("/") if p]
    client = request.headers.get("x-road-client", "")
    if len(parts) < 5:
        return _xroad_error(
            400, "Client.InvalidRequest", "the service id needs INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE"
        )
    if len(client.split("/")) != 4 or not all(client.split("/")):
        return _xroad_error(
            400, "Client.InvalidClientIdentifier", "X-Road-Client must be INSTANCE/CLASS/MEMBER/SUBSYSTEM"
        )
    query = request.query_params
    if "npi" in query:
        service, identifier = "anip", query["npi"]
    elif "ifu" in query:
        service, identifier = "dgi", query["ifu"]
    else:
        return _xroad_error(404, "Server.ServerProxy.UnknownService", "this simulator serves ?npi= and ?ifu= lookups")
    STATE.calls[service] += 1
    STATE.last[service] = {
        "service_id": "/".join(parts[:5]),
        "path": "/".join(parts[5:]),
        "x_road_client": client,
        "x_road_id": request.headers.get("x-road-id"),
        "x_road_user_id": request.headers.get("x-road-userid"),
    }
    behaviour = STATE.behaviours[service]
    mode, delay_ms, error_type = behaviour.mode, behaviour.delay_ms, behaviour.error_type
    if behaviour.times is not None:
        behaviour.times -= 1
        if behaviour.times <= 0:
            STATE.behaviours[service] = Behaviour()
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    if mode == "error":
        return Response("simulated provider failure", status_code=500, media_type="text/plain")
    if mode == "garbage":
        return Response(b'{"npi": "0", "nom": "garb', status_code=200, media_type="application/json")
    if mode == "xroad_error":
        return _xroad_error(500, error_type, "simulated X-Road failure")
    return _answer(service, identifier)


def _answer(service: str, identifier: str) -> Response[Any]:
    digits = 10 if service == "anip" else 13
    if len(identifier) != digits or not identifier.isascii() or not identifier.isdigit():
        return Response({"message": f"identifiant invalide: {digits} chiffres attendus"}, status_code=400)
    if identifier.endswith("00"):
        return Response({"message": "identifiant inconnu"}, status_code=404)
    if identifier.endswith("01"):
        return Response({}, status_code=200)
    return Response(fake_citizen(identifier) if service == "anip" else fake_company(identifier), status_code=200)


def _place(rng: random.Random, city: str) -> str:
    return f"{rng.choice(QUARTERS)}, {city}" if city == "Cotonou" else city


def fake_citizen(npi: str) -> dict[str, Any]:
    """A plausible, entirely fake Beninese citizen, always the same for the same NPI."""
    rng = random.Random(f"anip:{npi}")
    sex = rng.choice("MF")
    first = rng.choice(FIRST_NAMES[sex])
    if rng.random() < 0.4:
        first += " " + rng.choice([n for n in FIRST_NAMES[sex] if n != first])
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(0, 56 * 365))
    return {
        "npi": npi,
        "nom": rng.choice(LAST_NAMES),
        "prenoms": first,
        "date_naissance": born.isoformat(),
        "sexe": sex,
        "telephone": "+22901" + "".join(rng.choice("0123456789") for _ in range(8)),
        "residence": _place(rng, rng.choice(CITIES)),
        "nationalite": "BENINOISE",
    }


def fake_company(ifu: str) -> dict[str, Any]:
    """A plausible, entirely fake Beninese company, always the same for the same IFU."""
    rng = random.Random(f"dgi:{ifu}")
    city = rng.choice(CITIES)
    form = rng.choice(FORMS)
    owner = rng.choice(LAST_NAMES)
    name = f"ETS {owner} {rng.choice(TRADES)}" if form == "ETS" else f"{owner} {rng.choice(TRADES)} {form}"
    year = rng.randrange(5, 26)
    return {
        "ifu": ifu,
        "raison_sociale": name,
        "rccm": f"RB/{CITY_CODES.get(city, 'COT')}/{year:02d} {rng.choice('AB')} {rng.randrange(1000, 99999)}",
        "adresse": _place(rng, city),
        "etat": rng.choices(["ACTIF", "SUSPENDU", "RADIE"], weights=[85, 10, 5])[0],
    }


ROUTES: list[Any] = [xroad_rest, control_state, control, reset]
