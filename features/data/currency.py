"""Deal amounts in one corporate currency: exchange rates, and the one conversion everyone reads.

A deal's ``amount`` (and its amount history) is stored in the deal's own currency
(``deals.currency``; missing means the corporate currency). Rates are stored in
``exchange_rates`` as Salesforce states them (``CurrencyType`` / ``DatedConversionRate``
``ConversionRate``): units of a currency per one unit of the corporate currency, so an amount
divided by its rate is in the corporate currency. The corporate currency is the currency of the
row flagged ``is_corporate``; a store without one holds amounts in a single, unnamed currency.

:func:`in_corporate_currency` is the conversion, called once by
:func:`features.signals.pointintime.deal_states`: every reader of deal states (signals, metrics,
hygiene, review, snapshots, models, forecasts) sees ``amount`` in the corporate currency, with
``amount_original`` and ``currency`` beside it. Which rate:

- a currency with dated rates: the one in force on the date (the latest ``valid_from`` on or
  before it); before its first dated rate, that first rate;
- a currency with only a fixed rate: that rate, at every date.

Which date: ``as_of`` for a deal open then; its close for a deal closed by then (the rate it was
booked at, as Salesforce's advanced currency management converts closed opportunities). Both are
on or before ``as_of``, so a dated rate that starts after ``as_of`` changes nothing at ``as_of``.
A fixed rate has no date: changing it changes every date (that is what a fixed rate says).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from features.errors import StoreError


def corporate_currency(rates: pd.DataFrame) -> str | None:
    """The corporate currency named by ``rates`` (None: a single, unnamed currency)."""
    flagged = rates["is_corporate"].fillna(False).astype(bool)
    named = rates.loc[flagged, "currency"].dropna().unique()
    if len(named) > 1:
        raise StoreError(f"the exchange rates name several corporate currencies: {sorted(named)}")
    return str(named[0]) if len(named) else None


def rated_currencies(rates: pd.DataFrame) -> set[str]:
    """Currencies that have a rate (fixed or dated), the corporate one included."""
    return {str(c) for c in rates["currency"].dropna().unique()}


def _foreign(currencies: pd.Series, corporate: str | None) -> np.ndarray:
    """Rows whose amount needs a rate: a currency that is named and not the corporate one."""
    cur = currencies.astype(object)
    return (cur.notna() & (cur != corporate)).to_numpy(dtype=bool)


def rates_at(currencies: pd.Series, dates: pd.Series, rates: pd.DataFrame) -> np.ndarray:
    """The rate of each (currency, date) by the rules of the module docstring; NaN without one."""
    n = len(currencies)
    left = pd.DataFrame(
        {
            "_i": np.arange(n),
            "currency": currencies.astype("str").to_numpy(),
            "at": pd.to_datetime(dates.to_numpy()).astype("datetime64[us]"),
        }
    )
    out = np.full(n, np.nan)
    dated = rates[rates["valid_from"].notna()]
    if not dated.empty:
        right = dated[["currency", "valid_from", "rate"]].copy()
        right["currency"] = right["currency"].astype("str")
        right["valid_from"] = right["valid_from"].astype("datetime64[us]")
        known = left[left["at"].notna()].sort_values("at", kind="stable")
        hit = pd.merge_asof(
            known,
            right.sort_values("valid_from", kind="stable"),
            left_on="at",
            right_on="valid_from",
            by="currency",
            direction="backward",
        )
        out[hit["_i"].to_numpy()] = hit["rate"].to_numpy(dtype="float64")
        first = right.sort_values("valid_from", kind="stable").drop_duplicates("currency")
        before_first = left["currency"].map(first.set_index("currency")["rate"]).to_numpy(float)
        out = np.where(np.isnan(out), before_first, out)
    fixed = rates[rates["valid_from"].isna()].drop_duplicates("currency", keep="last")
    by_fixed = left["currency"].map(fixed.set_index("currency")["rate"]).to_numpy(dtype=float)
    return np.where(np.isnan(out), by_fixed, out)


def to_corporate(
    amounts: pd.Series, currencies: pd.Series, dates: pd.Series, rates: pd.DataFrame
) -> pd.Series:
    """Amounts in their currencies -> the corporate currency, each at its date.

    Raises :class:`StoreError` for a currency without any rate (the importer refuses such
    deals, so only a store edited by hand gets here).
    """
    amounts = amounts.astype("float64")
    corporate = corporate_currency(rates)
    foreign = _foreign(currencies, corporate)
    if not foreign.any():
        return amounts
    if corporate is None:
        raise StoreError(
            "deals carry currencies but the store names no corporate currency; load one with "
            "pipecast load --currency CODE"
        )
    rate = np.ones(len(amounts))
    rate[foreign] = rates_at(currencies[foreign], dates[foreign], rates)
    missing = sorted({str(c) for c in currencies[foreign][np.isnan(rate[foreign])]})
    if missing:
        raise StoreError(
            f"no exchange rate for {', '.join(missing)} in the store; load one with "
            "pipecast load --rates FILE.csv"
        )
    return pd.Series(amounts.to_numpy() / rate, index=amounts.index)


def in_corporate_currency(
    states: pd.DataFrame, deals: pd.DataFrame, rates: pd.DataFrame
) -> pd.DataFrame:
    """Deal states (one row per as_of and deal) with ``amount`` in the corporate currency and
    ``amount_original`` and ``currency`` beside it (module docstring: which rate, which date)."""
    if "currency" in deals.columns:
        by_deal = deals.drop_duplicates("deal_id").set_index("deal_id")["currency"]
        currency = pd.Series(by_deal.reindex(states["deal_id"]).to_numpy(), index=states.index)
    else:
        currency = pd.Series(pd.NA, index=states.index, dtype="str")
    currency = currency.where(currency.notna(), corporate_currency(rates)).astype("str")
    original = states["amount"].astype("float64")
    closed_at = pd.to_datetime(states["closed_at"]).astype("datetime64[us]")
    as_of = pd.to_datetime(states["as_of"]).astype("datetime64[us]")
    when = closed_at.where(closed_at.notna() & (closed_at <= as_of), as_of)
    return states.assign(
        amount=to_corporate(original, currency, when, rates),
        amount_original=original,
        currency=currency,
    )


def current_amounts(deals: pd.DataFrame, rates: pd.DataFrame) -> pd.Series:
    """The deal rows' amounts in the corporate currency as of their ``observed_at`` (closed deals
    at their close), for views of the store as exported (``pipecast summary``)."""
    if "currency" not in deals.columns:
        return deals["amount"].astype("float64")
    closed_at = pd.to_datetime(deals["closed_at"]).astype("datetime64[us]")
    observed = pd.to_datetime(deals["observed_at"]).astype("datetime64[us]")
    when = closed_at.where(closed_at.notna() & (closed_at <= observed), observed)
    return to_corporate(deals["amount"], deals["currency"], when, rates)


def missing_rates(
    currencies: Iterable[str], rates: pd.DataFrame, corporate: str | None
) -> list[str]:
    """The currencies among ``currencies`` (not the corporate one) that ``rates`` gives no rate."""
    have = rated_currencies(rates)
    return sorted({c for c in currencies if c != corporate and c not in have})
