"""Money as people read it: integer minor units (cents) in code and storage, `15.00 EUR` on
screen and in messages (docs/directus.md, "How money is shown")."""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 minor units that are not 2 (the rest of the world uses cents).
_CURRENCY_EXPONENTS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}


def currency_exponent(currency: str) -> int:
    """The number of minor-unit digits of the currency: 2 for EUR, 0 for JPY, 3 for KWD."""
    return _CURRENCY_EXPONENTS.get(currency.upper(), 2)


def major_units(cents: int, currency: str) -> Decimal:
    """Integer minor units as an exact decimal in the currency's units: 1500 EUR -> 15.00."""
    return Decimal(cents).scaleb(-currency_exponent(currency))


def format_amount(cents: int, currency: str) -> str:
    """Integer minor units as text: 5000 EUR -> "50.00 EUR", 500 JPY -> "500 JPY"."""
    exponent = currency_exponent(currency)
    sign = "-" if cents < 0 else ""
    whole, minor = divmod(abs(cents), 10**exponent)
    number = f"{whole}.{minor:0{exponent}d}" if exponent else str(whole)
    return f"{sign}{number} {currency.upper()}"
