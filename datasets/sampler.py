"""The paper's leave-one-category-out training pairs: a query and K supports from the same category.

Each epoch every normal training image of every non-target category is a query exactly once, with K other
images of its category as supports; a batch never mixes categories, so the registration network always
aligns images of one object type. The sampler works on indices into each category's image list.
"""
import random
from typing import NamedTuple

from utils.errors import UserError


class Batch(NamedTuple):
    category: str
    query_indices: list  # [B] image indices
    support_indices: list  # [B][K] distinct indices, never the query's own


def training_pools(categories, target):
    """Number of normal training images per category, the target held out (the paper's protocol)."""
    return {name: len(c.train_images) for name, c in categories.items() if name != target}


class PairSampler:
    def __init__(self, pools, shot, batch_size, seed):
        if shot < 1 or batch_size < 1:
            raise UserError(f"--shot ({shot}) and --batch_size ({batch_size}) must be at least 1")
        self.shot, self.batch_size, self.seed = shot, batch_size, seed
        # K distinct supports other than the query need at least K + 1 images
        self.pools = {name: n for name, n in sorted(pools.items()) if n > shot}
        self.skipped = sorted(name for name, n in pools.items() if n <= shot)
        if not self.pools:
            raise UserError(f"no training category has more than {shot} normal images (K supports plus the "
                            f"query); lower --shot or add training categories")

    def batches(self, epoch):
        """The epoch's batches in training order; the same (seed, epoch) always gives the same batches."""
        rng = random.Random(f"pairs/{self.seed}/{epoch}")
        batches = []
        for name, n in self.pools.items():
            order = rng.sample(range(n), n)
            for start in range(0, n, self.batch_size):
                queries = order[start:start + self.batch_size]
                # draw from the n - 1 other images: indices at or past the query shift up by one
                supports = [[j + (j >= q) for j in rng.sample(range(n - 1), self.shot)] for q in queries]
                batches.append(Batch(name, queries, supports))
        rng.shuffle(batches)
        return batches
