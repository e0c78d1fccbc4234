"""The vehicle catalogue seeded on an empty database: categories, energies, types, brands and models
common in Benin (cars and the motorcycles that make most of the fleet), and characteristics.

Category codes are those of the config fee grid (two_three_wheels, four_wheels_plus) and the
characteristic codes tinted_windows, power_over_10cv and utility are the ones its adjustments match.
The model lists are plausible placeholders, not an official type-approval register.
"""

from __future__ import annotations

import asyncpg

CATEGORIES = [
    ("two_three_wheels", "Deux et trois roues"),
    ("four_wheels_plus", "Quatre roues et plus"),
]

ENERGIES = [
    ("essence", "Essence"),
    ("gazole", "Gazole"),
    ("hybride", "Hybride"),
    ("electricite", "Électricité"),
]

TYPES = [
    ("motorcycle", "Motocyclette", "two_three_wheels"),
    ("scooter", "Scooter", "two_three_wheels"),
    ("tricycle", "Tricycle", "two_three_wheels"),
    ("passenger_car", "Voiture particulière", "four_wheels_plus"),
    ("suv", "Véhicule tout-terrain (SUV)", "four_wheels_plus"),
    ("pickup", "Pick-up", "four_wheels_plus"),
    ("van", "Camionnette", "four_wheels_plus"),
    ("minibus", "Minibus", "four_wheels_plus"),
    ("bus", "Autocar", "four_wheels_plus"),
    ("truck", "Camion", "four_wheels_plus"),
]

# (code, name, country, [(model, type)])
BRANDS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    (
        "toyota",
        "Toyota",
        "Japon",
        [
            ("Corolla", "passenger_car"),
            ("Camry", "passenger_car"),
            ("Yaris", "passenger_car"),
            ("RAV4", "suv"),
            ("Land Cruiser", "suv"),
            ("Hilux", "pickup"),
            ("HiAce", "minibus"),
            ("Coaster", "bus"),
        ],
    ),
    (
        "peugeot",
        "Peugeot",
        "France",
        [
            ("206", "passenger_car"),
            ("307", "passenger_car"),
            ("406", "passenger_car"),
            ("508", "passenger_car"),
            ("3008", "suv"),
            ("Partner", "van"),
            ("Boxer", "van"),
        ],
    ),
    (
        "mercedes_benz",
        "Mercedes-Benz",
        "Allemagne",
        [
            ("Classe C", "passenger_car"),
            ("Classe E", "passenger_car"),
            ("ML", "suv"),
            ("Sprinter", "van"),
            ("Actros", "truck"),
        ],
    ),
    (
        "nissan",
        "Nissan",
        "Japon",
        [
            ("Almera", "passenger_car"),
            ("Sunny", "passenger_car"),
            ("X-Trail", "suv"),
            ("Pathfinder", "suv"),
            ("Navara", "pickup"),
            ("Urvan", "minibus"),
        ],
    ),
    (
        "hyundai",
        "Hyundai",
        "Corée du Sud",
        [("Accent", "passenger_car"), ("Elantra", "passenger_car"), ("Tucson", "suv"), ("Santa Fe", "suv")],
    ),
    (
        "kia",
        "Kia",
        "Corée du Sud",
        [("Picanto", "passenger_car"), ("Rio", "passenger_car"), ("Sportage", "suv"), ("Sorento", "suv")],
    ),
    (
        "honda",
        "Honda",
        "Japon",
        [
            ("Civic", "passenger_car"),
            ("Accord", "passenger_car"),
            ("CR-V", "suv"),
            ("CG 125", "motorcycle"),
            ("Wave 110", "motorcycle"),
        ],
    ),
    (
        "suzuki",
        "Suzuki",
        "Japon",
        [("Swift", "passenger_car"), ("Vitara", "suv"), ("Jimny", "suv"), ("GN 125", "motorcycle")],
    ),
    (
        "mitsubishi",
        "Mitsubishi",
        "Japon",
        [("Pajero", "suv"), ("L200", "pickup"), ("Lancer", "passenger_car"), ("Canter", "truck")],
    ),
    (
        "ford",
        "Ford",
        "États-Unis",
        [("Ranger", "pickup"), ("Focus", "passenger_car"), ("Explorer", "suv"), ("Transit", "van")],
    ),
    (
        "renault",
        "Renault",
        "France",
        [("Clio", "passenger_car"), ("Mégane", "passenger_car"), ("Logan", "passenger_car"), ("Duster", "suv")],
    ),
    (
        "volkswagen",
        "Volkswagen",
        "Allemagne",
        [("Golf", "passenger_car"), ("Passat", "passenger_car"), ("Polo", "passenger_car"), ("Touareg", "suv")],
    ),
    (
        "bajaj",
        "Bajaj",
        "Inde",
        [
            ("Boxer BM 100", "motorcycle"),
            ("Boxer BM 150", "motorcycle"),
            ("Discover 125", "motorcycle"),
            ("Pulsar 150", "motorcycle"),
            ("RE", "tricycle"),
        ],
    ),
    (
        "tvs",
        "TVS",
        "Inde",
        [("Star HLX 125", "motorcycle"), ("Apache RTR 160", "motorcycle"), ("King", "tricycle")],
    ),
    (
        "haojue",
        "Haojue",
        "Chine",
        [("HJ 125-7", "motorcycle"), ("DK 125", "motorcycle"), ("Lucky 110", "scooter")],
    ),
    ("dayun", "Dayun", "Chine", [("DY 110", "motorcycle"), ("DY 125", "motorcycle"), ("DY 150", "motorcycle")]),
    ("lifan", "Lifan", "Chine", [("LF 110", "motorcycle"), ("LF 125", "motorcycle"), ("LF 150", "motorcycle")]),
    ("sanya", "Sanya", "Chine", [("SY 125", "motorcycle"), ("SY 150", "motorcycle")]),
    (
        "yamaha",
        "Yamaha",
        "Japon",
        [("Crypton", "motorcycle"), ("YBR 125", "motorcycle"), ("DT 125", "motorcycle"), ("Mio", "scooter")],
    ),
    ("jincheng", "Jincheng", "Chine", [("JC 110", "motorcycle"), ("JC 125", "motorcycle")]),
    ("qlink", "Qlink", "Chine", [("XP 125", "motorcycle"), ("Pluto 150", "motorcycle")]),
    ("kymco", "Kymco", "Taïwan", [("Agility 125", "scooter")]),
]

CHARACTERISTICS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("equipment", "Équipements", [("tinted_windows", "Vitres teintées"), ("air_conditioning", "Climatisation")]),
    (
        "usage",
        "Usage",
        [("utility", "Véhicule utilitaire"), ("taxi", "Taxi"), ("zemidjan", "Taxi-moto (zémidjan)")],
    ),
    ("power", "Puissance", [("power_over_10cv", "Puissance fiscale > 10 CV")]),
]


async def load(con: asyncpg.Connection) -> int:
    """Insert whatever is missing; return how many rows were added."""
    added = 0

    async def insert(sql: str, *args: object) -> None:
        nonlocal added
        if await con.fetchval(sql + " ON CONFLICT DO NOTHING RETURNING true", *args):
            added += 1

    for code, label in CATEGORIES:
        await insert("INSERT INTO vehicles.categories (code, label) VALUES ($1, $2)", code, label)
    for code, label in ENERGIES:
        await insert("INSERT INTO vehicles.energies (code, label) VALUES ($1, $2)", code, label)
    for code, label, category in TYPES:
        await insert("INSERT INTO vehicles.types (code, label, category) VALUES ($1, $2, $3)", code, label, category)
    for code, name, country, models in BRANDS:
        await insert("INSERT INTO vehicles.brands (code, name, country) VALUES ($1, $2, $3)", code, name, country)
        for model, type_code in models:
            await insert(
                "INSERT INTO vehicles.models (brand_code, name, vehicle_type) VALUES ($1, $2, $3)",
                code,
                model,
                type_code,
            )
    for code, label, values in CHARACTERISTICS:
        await insert("INSERT INTO vehicles.characteristic_categories (code, label) VALUES ($1, $2)", code, label)
        for value, value_label in values:
            await insert(
                "INSERT INTO vehicles.characteristic_values (code, category_code, label) VALUES ($1, $2, $3)",
                value,
                code,
                value_label,
            )
    return added
