"""De-duplication across the whole run: exact, near-duplicate text (MinHash LSH),
near-duplicate images (pHash) and repeated instructions about the same video.

The algorithms live in curate.dedup (one module each); this stage schedules them on the
executor, never a driver loop over rows, memory independent of cluster size:
1. map: per sample, the normalised text, its bucket keys (exact text + media sha256s, each
   LSH band, optionally each pHash band, the video it asks about), the shingle hashes, the
   media identity and the keep-rule order (steps.features);
2. one task plans on compact arrays (8-byte keys and ranks, no row payload): the candidate
   pairs of every bucket, at most ANCHORS per member (steps.plan, curate.dedup.buckets);
3. shuffle: one task per features block sends the features of paired samples to a few
   verification partitions (steps.route), and one task per partition verifies all its pairs at
   once (steps.verify_partition, curate.dedup.verify);
4. one task takes the connected components of the verified edges and picks the sample to
   keep in each cluster (steps.decide, curate.dedup.components);
5. map: the other members of each cluster become reject rows naming the kept sample (steps.mark).

What counts as a duplicate:
- exact_duplicate: same normalised text and the same media bytes;
- near_duplicate: estimated Jaccard of the shingle sets >= `threshold` (`threshold_cjk` when
  both texts are mostly Chinese or Japanese, curate.dedup.lsh) and the same media (same
  bytes, or for images a pHash Hamming distance <= `image_hamming`). A different picture
  with the same generic question is not a duplicate;
- near_duplicate_image (options.image_only=true, for captioning corpora): every image of
  the two samples is within `image_hamming`, whatever the text;
- duplicate_video_instruction (Baichuan-omni): two questions about the same video whose
  word uni+bigram hashing vectors have cosine >= options.video_instruction_cosine (0.9).

Keep rule: the sample of the source listed first in the recipe, then the smallest id. (Quality
scores cannot decide: LLM scoring runs after dedupe, so that no GPU time goes to duplicates.)
"""

from __future__ import annotations

from typing import Any, ClassVar

from curate.dedup import steps
from curate.dedup.clusters import near_duplicate_clusters
from curate.dedup.lsh import lsh_settings
from curate.stages.base import GlobalStage, Job, Resources

__all__ = ["DedupeStage", "near_duplicate_clusters"]


class DedupeStage(GlobalStage):
    name: ClassVar[str] = "dedupe"
    resources: ClassVar[Resources] = Resources(cpus=1, batch_size=1024)
    ctx_keys: ClassVar[tuple[str, ...]] = ("source_order",)  # the keep rule prefers the source listed first

    def inputs(self) -> list[str]:
        return ["conversations", "media"]

    def settings(self) -> dict[str, Any]:
        c = self.config
        opts = dict(c.options)
        unknown = set(opts) - {"image_only", "video_instructions", "video_instruction_cosine"}
        if unknown:
            raise ValueError(f"stages.dedupe.options: unknown keys {sorted(unknown)}")
        if c.num_perm & (c.num_perm - 1):
            raise ValueError(f"stages.dedupe.num_perm must be a power of two, got {c.num_perm}")
        return {"exact": c.exact, "near_text": c.near_text, "num_perm": c.num_perm, "shingle": c.shingle,
                **lsh_settings(c.threshold, c.threshold_cjk, c.num_perm), "near_image": c.near_image,
                "image_hamming": c.image_hamming, "image_only": bool(opts.get("image_only", False)),
                "video_instructions": bool(opts.get("video_instructions", True)),
                "video_cosine": float(opts.get("video_instruction_cosine", 0.9))}

    def validate(self) -> None:
        self.settings()

    def transform(self, ds: Any, job: Job) -> tuple[Any, dict[str, Any]]:
        ex = job.executor
        cfg = self.settings()
        order = {name: i for i, name in enumerate(self.ctx.sources)}
        feats = ex.dataset(ex.blocks(ex.map(ds, steps.features, job.resources, cfg=cfg, source_order=order)))
        # partitions of the verification: a few per CPU, more when the corpus is large
        partitions = max(2 * ex.cpus(), feats.count() // 200_000)
        key_blocks = ex.blocks(feats.select_columns(["id", "order", "keys"]))
        route, pairs, nodes, n_pairs = ex.remote(steps.plan, num_returns=4)(partitions, *key_blocks)
        n_pairs = int(ex.get(n_pairs))
        if n_pairs:
            # a direct shuffle: each features block splits into its partitions (one task per
            # block), then one task per partition verifies its pairs; Ray Data's groupby
            # would sort the routed rows first and sample them for its boundaries
            split = ex.remote(steps.route, num_returns=partitions)
            pieces = [split(block, route, partitions) for block in ex.blocks(feats)]
            verify = ex.remote(steps.verify_partition)
            edges = [verify(pairs, cfg, p, *[block[p] for block in pieces]) for p in range(partitions)]
            decisions = ex.share(ex.remote(steps.decide)(nodes, *edges))
        else:
            decisions = ex.share(steps.DECISIONS.empty_table())
        return ex.map(ds, steps.mark, job.resources, decisions=decisions), {"candidate_pairs": n_pairs}
