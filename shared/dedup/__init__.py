"""Catalogue de-duplication: "which products in my catalogue are the same item twice?".

- :mod:`~shared.dedup.pairs`: near-duplicate pairs by cosine similarity, blockwise (pure numpy)
- :mod:`~shared.dedup.phash`: a 64-bit perceptual hash and its (mirror-aware) Hamming distance
- :mod:`~shared.dedup.groups`: connected components of the pairs, the item to keep
- :mod:`~shared.dedup.detect`: exact + near-duplicate groups with evidence, from arrays
- :mod:`~shared.dedup.run`: the adapter: database -> detect -> a stored run
- :mod:`~shared.dedup.transforms`, :mod:`~shared.dedup.study`, :mod:`~shared.dedup.calibrate`:
  generated near-duplicates and hard negatives, precision/recall, thresholds per category
"""
