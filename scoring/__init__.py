"""RegAD's test-time method, one module per step, in pipeline order:

    augment.py     K support images -> 22 augmented variants each (paper Sec. 3.3)
    features.py    restored layer1-3 maps -> per-position embeddings (StageMaps)
    gaussian.py    support embeddings -> per-position Gaussian; test embeddings -> Mahalanobis distances
    maps.py        distances -> upsampled, blurred anomaly maps; image score = max of the map
    metrics.py     maps + labels/masks -> image AUROC, F1-max, pixel AUROC, AUPRO
    scorers.py     the way in: Scorer (embed / fit / maps) and GaussianScorer, RegAD's scorer
    patchcore.py   PatchCoreScorer, the nearest-neighbour baseline, a sibling of GaussianScorer
    evaluation.py  the paper's protocol: every fixed support set of a category -> metrics per round

The network (models/) computes the restored maps; nothing here trains it.
"""
