"""Duplicate detection, the algorithms behind curate.stages.dedupe (which only schedules them).

One job per module, in the order a sample meets them:
- shingles: the normalised text and its shingle hashes (word and CJK-character n-grams);
- minhash: one-permutation MinHash signatures of the shingle sets;
- lsh: the band split chosen from the threshold, and the bucket keys of the bands;
- phash: perceptual image hashes and their Hamming-distance buckets;
- buckets: the duplicate kinds, bucket keys and the candidate pairs of shared buckets;
- verify: the exact checks of candidate pairs (Jaccard, media, pHash, question cosine);
- components: clusters of verified pairs and the sample each one keeps;
- clusters: near_duplicate_clusters, the text algorithm in one process on a list of texts.
"""
