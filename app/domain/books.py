"""Book diffs and checksums: what an ``orderbook_diff`` / ``depth_diff`` event
carries, and how a client proves its copy. Pure.

A book side is a list of ``[price, quantity]`` pairs, best first, the exact
strings the gateway serves (strictly ordered: the decoder sees to it). A
*diff* from one book to the next sets each changed level's quantity to the
new exact string, and a quantity of ``"0"`` removes a level; applying it to
the old book and ordering the levels best first gives exactly the new book.
Other fields of a book's ``data`` (a depth chart's ``asks_min_price``…) that
changed ride along in the diff's ``data`` under their own names.

The checksum is Kraken's recipe for its book (docs/api.md, "Book diffs"): the
CRC32 of the top 10 asks (lowest first) then the top 10 bids (highest first),
each level written as its price then its quantity, each with the decimal
point removed and then its leading zeros, with no separators.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from decimal import Decimal

from app.domain.values import Json

CHECKSUM_LEVELS = 10
REMOVED = "0"
SIDES = ("bids", "asks")

Side = Sequence[Sequence[str]]  # [[price, quantity], …], best first
Changes = dict[str, str]  # price → new quantity ("0": removed), in diff order


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def checksum(bids: Side, asks: Side) -> int:
    """Kraken's CRC32 of a book's top levels (unsigned 32-bit)."""
    parts = [_digits(p) + _digits(q) for p, q in asks[:CHECKSUM_LEVELS]]
    parts += [_digits(p) + _digits(q) for p, q in bids[:CHECKSUM_LEVELS]]
    return zlib.crc32("".join(parts).encode("ascii"))


def side_changes(old: Side, new: Side) -> Changes:
    """The level changes that turn side ``old`` into side ``new``: the new or
    changed levels best first, then the removed ones (quantity ``"0"``)."""
    held = {price: quantity for price, quantity in old}
    changes: Changes = {}
    for price, quantity in new:
        if held.pop(price, None) != quantity:
            changes[price] = quantity
    for price in held:
        changes[price] = REMOVED
    return changes


def book_changes(old: Mapping[str, Json], new: Mapping[str, Json]) -> dict[str, Json]:
    """A diff's ``data``: ``bids`` and ``asks`` as ``[price, quantity]`` pairs,
    and every other field of ``new`` whose value is not the one in ``old``."""
    data: dict[str, Json] = {}
    for side in SIDES:
        data[side] = [[p, q] for p, q in side_changes(_side(old, side), _side(new, side)).items()]
    for key, value in new.items():
        if key not in SIDES and old.get(key) != value:
            data[key] = value
    return data


def merge(first: Mapping[str, Json], then: Mapping[str, Json]) -> dict[str, Json]:
    """One diff doing what ``first`` then ``then`` do (a later level wins)."""
    data: dict[str, Json] = {}
    for side in SIDES:
        changes = dict(_pairs(first, side))
        changes.update(_pairs(then, side))
        data[side] = [[p, q] for p, q in changes.items()]
    for key in (*first, *then):
        if key not in SIDES:
            data[key] = then.get(key, first.get(key))
    return data


def apply(book: Mapping[str, Json], data: Mapping[str, Json]) -> dict[str, Json]:
    """The book that diff ``data`` makes of ``book`` (levels best first)."""
    result = dict(book)
    for key, value in data.items():
        if key not in SIDES:
            result[key] = value
    for side in SIDES:
        levels = {p: q for p, q in _side(book, side)}
        for price, quantity in _pairs(data, side):
            if quantity == REMOVED:
                levels.pop(price, None)
            else:
                levels[price] = quantity
        ordered = sorted(
            levels.items(), key=lambda level: Decimal(level[0]), reverse=side == "bids"
        )
        result[side] = [[p, q] for p, q in ordered]
    return result


def _side(book: Mapping[str, Json], side: str) -> Side:
    levels = book.get(side, ())
    assert isinstance(levels, Sequence)
    return levels  # type: ignore[return-value]


def _pairs(data: Mapping[str, Json], side: str) -> list[tuple[str, str]]:
    return [(str(p), str(q)) for p, q in _side(data, side)]
