"""Pack, step 1 (select): make over-budget samples fit a packed sequence (InternVL 2.5, sec. 4.2).

Rows within both budgets (l_max tokens, t_max tiles) pass untouched and are never turned
into Python objects; a file whose rows all fit is hard-linked by the runner, not read
(keeps_file). An over-budget row is split at turn boundaries or truncated
(packing.select); its parts replace it, later parts counting as `synthesized:pack`. A row
that cannot be made to fit is rejected `too_long` (reject stage `pack`), with its sizes.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from curate.records import reject
from curate.stages.base import Job, Resources, Stage, footer_max
from packing.select import SelectCounts, Unfit, counts_from_meta, select_row


class PackSelectStage(Stage):
    name: ClassVar[str] = "pack_select"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=256)
    config_keys: ClassVar[tuple[str, ...]] = ("max_tokens", "max_tiles", "split", "truncate")  # stages.pack

    def inputs(self) -> list[str]:
        return ["input_ids", "labels", "n_tokens", "n_tiles", "turn_starts", "media_spans"]

    def keeps_file(self, footer: Any) -> bool:
        """A file whose largest sample is within both budgets passes as it is (most files:
        only over-budget rows are changed), so it is linked, not read and written again."""
        tokens, tiles = footer_max(footer, "n_tokens"), footer_max(footer, "n_tiles")
        return tokens is not None and tiles is not None and \
            tokens <= self.config.max_tokens and tiles <= self.config.max_tiles

    def process_batch(self, batch: pa.Table) -> pa.Table:
        c = self.config
        fits = pc.and_(pc.less_equal(batch.column("n_tokens"), c.max_tokens),
                       pc.less_equal(batch.column("n_tiles"), c.max_tiles))
        over = pc.and_(pc.invert(fits), pc.is_null(batch.column("reject_reason")))
        if not pc.any(over).as_py():
            return batch
        rows = [out for row in batch.filter(over).to_pylist()
                for out in select_or_reject(row, c.max_tokens, c.max_tiles, split=c.split,
                                            truncate=c.truncate)]
        return pa.concat_tables([batch.filter(pc.invert(over)), pa.Table.from_pylist(rows, schema=batch.schema)])

    def finish(self, job: Job) -> dict[str, Any]:
        """What the select step did, from its output: parts carry their provenance in `meta`."""
        out = pads.dataset(str(job.output_dir), format="parquet")
        parts = out.to_table(columns=["meta"], filter=pc.field("reject_reason").is_null()
                             & pc.match_substring(pc.field("meta"), '"select"'))
        metas = parts.column("meta").to_pylist()
        counts = counts_from_meta(metas)
        counts.rejected = out.count_rows(filter=pc.field("reject_reason").is_valid())
        counts.over_budget = sum((json.loads(m).get("select") or {}).get("part") == 1 for m in metas) + counts.rejected
        return {"select": counts.as_dict()}


def select_or_reject(row: dict[str, Any], max_tokens: int, max_tiles: int, *, split: bool = True,
                     truncate: bool = False, counts: SelectCounts | None = None) -> list[dict[str, Any]]:
    """packing.select.select_row; a row it cannot make fit is rejected `too_long` at stage `pack`,
    its sizes the detail."""
    try:
        return select_row(row, max_tokens, max_tiles, split=split, truncate=truncate, counts=counts)
    except Unfit as e:
        return [reject(dict(row), "pack", e.reason, str(e))]
