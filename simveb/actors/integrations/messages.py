"""The integrations service's public contract: registry lookups other actors may ask for."""

from __future__ import annotations

from datetime import date

from simveb.bus import Ask, Record


class Citizen(Record):
    """What ANIP's CITIZEN_BY_NPI_LITE returns about a person."""

    npi: str
    last_name: str
    first_name: str
    birth_date: date | None = None
    sex: str | None = None  # "M" or "F"
    phone: str | None = None
    residence: str | None = None
    nationality: str | None = None


class Company(Record):
    """What DGI's DETAIL-IFU returns about a taxpayer."""

    ifu: str
    name: str
    rccm: str | None = None
    address: str | None = None
    tax_status: str | None = None  # e.g. "active", "suspended"


class LookupCitizen(Ask[Citizen]):
    """Sent by users (NPI verification); NotFound when ANIP does not know the NPI, Unavailable when down."""

    npi: str


class LookupCompany(Ask[Company]):
    """Sent by users (company KYC); NotFound when DGI does not know the IFU, Unavailable when down."""

    ifu: str
