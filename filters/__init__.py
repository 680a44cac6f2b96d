"""Per-sample checks: pure functions over one record, so they test without Ray.

- repetition: repetition_score(text) in [0, 1] and is_repetitive(text) (nine named signals)
- heuristics: InternVL 2.5's rules (empty/trivial answers, runs, duplicate lines, ...)
- language: fastText language id with the bundled lid.176.ftz
- clipscore: open_clip image-text cosine similarity from a local model folder

curate.stages.filter runs them over the dataset and records scores and decisions.
"""
