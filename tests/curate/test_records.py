"""records.reject_where: the vectorised reject that dedupe, pack_plan and loss cleaning share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.records import CORE_SCHEMA, reject, reject_where


def table(n: int, rejected: dict[int, str] | None = None) -> pa.Table:
    rows = [{name: None for name in CORE_SCHEMA.names} | {"id": f"r{i}"} for i in range(n)]
    for i, reason in (rejected or {}).items():
        reject(rows[i], "earlier", reason, "first")
    return pa.Table.from_pylist(rows, schema=CORE_SCHEMA)


def rejects(t: pa.Table) -> list[tuple]:
    return list(zip(*(t.column(c).to_pylist() for c in ("reject_stage", "reject_reason", "reject_detail"))))


def test_only_alive_rows_in_the_mask_are_rejected():
    t = table(4, {1: "too_short"})
    out = reject_where(t, np.array([True, True, False, True]), "dedupe", "exact_duplicate", "same text")
    assert rejects(out) == [("dedupe", "exact_duplicate", "same text"), ("earlier", "too_short", "first"),
                            (None, None, None), ("dedupe", "exact_duplicate", "same text")]
    assert out.schema == t.schema and out.column("id") == t.column("id")


def test_reasons_and_details_per_row_and_arrow_masks_with_nulls():
    t = table(3)
    mask = pa.chunked_array([[True, None], [True]])  # null counts as False
    out = reject_where(t, mask, "pack", np.array(["too_long", "x", "not_drawn"]), ["a", "b", "c"])
    assert rejects(out) == [("pack", "too_long", "a"), (None, None, None), ("pack", "not_drawn", "c")]
    # an Arrow array of reasons with nulls where the mask is False (dedupe's lookup by id)
    out = reject_where(t, [False, True, False], "dedupe", pa.array([None, "near_duplicate", None]),
                       pa.array([None, "of r0", None]))
    assert rejects(out) == [(None, None, None), ("dedupe", "near_duplicate", "of r0"), (None, None, None)]


def test_details_are_cleaned_as_reject_cleans_them():
    details = ["cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e40>",
               "bad <Thing at 0xDEADbeef> and <_io.BytesIO object at 0x1>", "é中" * 1500, ""]
    out = reject_where(table(4), np.ones(4, bool), "media", "unreadable", details)
    want = [reject({}, "media", "unreadable", d)["reject_detail"] for d in details]
    assert out.column("reject_detail").to_pylist() == want
    assert want[0] == "cannot identify image file <_io.BytesIO>" and len(want[2]) == 2000


def test_nothing_to_reject_returns_the_table_itself():
    t = table(3, {0: "x"})
    assert reject_where(t, [True, False, False], "s", "r") is t
    assert reject_where(t, np.zeros(3, bool), "s", "r") is t
    empty = table(0)
    assert reject_where(empty, np.zeros(0, bool), "s", "r") is empty
