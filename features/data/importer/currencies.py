"""Currencies of an import: the corporate currency, each deal's currency, and a rate for each.

Amounts are stored in the deal's own currency and converted when read
(``features.data.currency``). So an import must settle, once:

- **the corporate currency**, the one every amount is reported in. Named by ``--currency``, the
  mapping's ``currency:``, the export's rates (Salesforce ``CurrencyType.IsCorporate``) or the
  store (a store keeps one for good); all that name one must agree, else the import is refused
  naming each. When none does, ``PIPECAST_CURRENCY``; else, if every deal is in one currency and
  the export has no rates, that currency (noted); else the amounts are in a single unnamed
  currency, as in a single-currency org.
- **each deal's currency**: its ``currency`` column (Salesforce ``CurrencyIsoCode``) or the
  mapping's default; an empty cell of a provided column is the corporate currency. An export
  without the column leaves stored deals' currencies alone (new deals are in the corporate one).
- **a rate for every other currency**, in the export's rates or the store's: a deal in a currency
  without one is refused, naming the currency and how to add a rate. The corporate currency's
  rates must be 1.

The corporate currency is recorded as a rate row (rate 1, ``is_corporate``), so the store keeps
it and a later import in another one is refused, never mixed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.data.currency import corporate_currency, rated_currencies
from features.data.importer.checks import check_table
from features.data.importer.problems import printable, shown
from features.data.importer.run import ROW, SRC, ImportRun

_RATES = "exchange_rates"


def check_rates(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    """The export's rates: required values, positive rates, one rate per currency and date."""
    rates = frames.get(_RATES)
    if rates is None:
        return
    # A source without the flag (dated rates) flags nothing.
    flag = rates["is_corporate"] if "is_corporate" in rates else pd.Series(False, index=rates.index)
    rates["is_corporate"] = flag.fillna(False).astype(bool)
    if "valid_from" not in rates:
        rates["valid_from"] = pd.Series(pd.NaT, index=rates.index, dtype="datetime64[us]")
    check_table(run, _RATES, rates)
    zero = rates["rate"] == 0
    run.report(_RATES, rates, zero, "rate", lambda _v: "an exchange rate must be above 0")
    key = ["currency", "valid_from"]
    same = rates.drop_duplicates([*key, "rate"])
    clash = same.duplicated(key, keep=False) & same["currency"].notna()
    run.report(
        _RATES,
        same,
        clash,
        "rate",
        lambda v: f"two different rates for the same currency and date (rate {shown(v)})",
    )
    frames[_RATES] = rates.drop_duplicates([*key, "rate"]).reset_index(drop=True)


def _named_corporate(run: ImportRun, rates: pd.DataFrame | None) -> dict[str, str]:
    """Who names which corporate currency: option, mapping, export, store."""
    named: dict[str, str] = {}
    if run.options.currency:
        named["--currency"] = run.options.currency
    if run.mapping is not None and run.mapping.currency:
        named["the mapping's currency:"] = run.mapping.currency
    if rates is not None and "is_corporate" in rates:
        flagged = rates[rates["is_corporate"].fillna(False).astype(bool)]
        for src, group in flagged.groupby(SRC, sort=True):
            file = run.sources[_RATES][int(str(src))].file
            for code in sorted(group["currency"].dropna().unique()):
                named[f"{printable(file)} (corporate flag, {code})"] = str(code)
    stored = run.options.known_rates
    if stored is not None and not stored.empty:
        code = corporate_currency(stored)
        if code is not None:
            named["the store"] = code
    return named


def _corporate(run: ImportRun, rates: pd.DataFrame | None) -> tuple[str | None, bool] | None:
    """The corporate currency and whether anything named it (module docstring); None, with a
    problem, when they disagree."""
    named = _named_corporate(run, rates)
    codes = set(named.values())
    if len(codes) > 1:
        said = ", ".join(f"{who} says {code}" for who, code in named.items())
        run.problem(
            _RATES,
            f"the corporate currency is named differently: {said}; a store keeps one "
            "corporate currency (load another one into another store)",
        )
        return None
    if codes:
        return codes.pop(), True
    return run.options.default_currency, run.options.default_currency is not None


def currencies(run: ImportRun, frames: dict[str, pd.DataFrame]) -> None:
    """Settle the corporate currency, the deals' currencies and their rates (module docstring)."""
    deals, rates = frames["deals"], frames.get(_RATES)
    provided = "currency" in run.provided.get("deals", set())
    if "currency" not in deals:
        deals["currency"] = pd.Series(pd.NA, index=deals.index, dtype="str")
    settled = _corporate(run, rates)
    if settled is None:
        return
    corporate, named = settled
    used = {str(c) for c in deals["currency"].dropna().unique()}
    if corporate is None and used:
        if len(used) == 1 and rates is None:
            corporate = used.pop()
            named = True
            run.note(
                f"every deal is in {corporate} and nothing names the corporate currency: "
                f"{corporate} taken as the corporate currency (pass --currency to name it)"
            )
        else:
            run.problem(
                "deals",
                f"the deals are in {len(used)} currencies ({', '.join(sorted(used))}) and nothing "
                "names the corporate currency to report them in: export the CRM's currency "
                "table (Salesforce CurrencyType.csv) or pass --currency CODE",
                "currency",
            )
            return
    if provided and corporate is not None:
        deals["currency"] = deals["currency"].fillna(corporate)
    _check_coverage(run, deals, rates, corporate)
    if named and corporate is not None:
        frames[_RATES] = _with_corporate_row(run, rates, corporate)


def _check_coverage(
    run: ImportRun, deals: pd.DataFrame, rates: pd.DataFrame | None, corporate: str | None
) -> None:
    """Every deal currency but the corporate one has a rate; the corporate one's rates are 1."""
    have = rated_currencies(rates) if rates is not None else set()
    if run.options.known_rates is not None:
        have |= rated_currencies(run.options.known_rates)
    cur = deals["currency"]
    lacking = cur.notna() & (cur != corporate) & ~cur.isin(sorted(have))
    run.report(
        "deals",
        deals,
        lacking,
        "currency",
        lambda v: (
            f"no exchange rate for {v} (amounts are reported in {corporate}): add {v} to "
            "the export's rates (Salesforce CurrencyType.csv / DatedConversionRate.csv, or "
            "exchange_rates.csv), or pass --rates FILE.csv with columns "
            f"currency,rate[,valid_from] (rate: {v} per 1 {corporate})"
        ),
    )
    if rates is not None and corporate is not None:
        off = (rates["currency"] == corporate) & ~np.isclose(rates["rate"].fillna(1.0), 1.0)
        run.report(
            _RATES,
            rates,
            off,
            "rate",
            lambda v: f"{corporate} is the corporate currency: its rate must be 1, not {shown(v)}",
        )


def _with_corporate_row(run: ImportRun, rates: pd.DataFrame | None, corporate: str) -> pd.DataFrame:
    """The rates with the corporate currency's own row (rate 1, flagged), so the store keeps it."""
    run.provide(_RATES, ["currency", "rate", "valid_from", "is_corporate"])
    row = pd.DataFrame(
        {
            "currency": pd.Series([corporate], dtype="str"),
            "rate": [1.0],
            "valid_from": pd.Series([pd.NaT], dtype="datetime64[us]"),
            "is_corporate": [True],
            SRC: [-1],
            ROW: [0],
        }
    )
    if rates is None:
        return row
    fixed_corporate = (rates["currency"] == corporate) & rates["valid_from"].isna()
    rest = rates.loc[~fixed_corporate]
    return pd.concat([rest, row.astype(rest.dtypes.to_dict())], ignore_index=True)
