"""The paper's leave-one-category-out training pairs: a query and K supports from the same category.

Exactly the official `FSAD_Dataset_train` draw: each epoch every normal training image of every non-target
category is a query once (each category shuffled, cut into batches of --batch_size, the batches shuffled),
and each of its K supports is drawn independently and uniformly from the category's OTHER images. Supports
may therefore repeat within a query (a 3-image category at K=2 repeats one in half of its queries), and
every category with at least 2 images trains, whatever K is. A batch never mixes categories, so the
registration network always aligns images of one object type. The sampler works on indices into each
category's image list.
"""
import random
from typing import NamedTuple

from utils.errors import UserError


class Batch(NamedTuple):
    category: str
    query_indices: list  # [B] image indices
    support_indices: list  # [B][K] indices, each another image than the query's own; repeats allowed


def training_pools(categories, target):
    """Number of normal training images per category, the target held out (the paper's protocol)."""
    return {name: len(c.train_images) for name, c in categories.items() if name != target}


class PairSampler:
    def __init__(self, pools, shot, batch_size, seed):
        if shot < 1 or batch_size < 1:
            raise UserError(f"--shot ({shot}) and --batch_size ({batch_size}) must be at least 1")
        self.shot, self.batch_size, self.seed = shot, batch_size, seed
        # a query needs one other image to draw its supports from (the official loop never ends with none)
        self.pools = {name: n for name, n in sorted(pools.items()) if n >= 2}
        self.skipped = sorted(name for name, n in pools.items() if n < 2)
        if not self.pools:
            raise UserError("no training category has 2 normal images (a query and another image for its "
                            "supports); add training categories or images")

    def batches(self, epoch):
        """The epoch's batches in training order; the same (seed, epoch) always gives the same batches."""
        rng = random.Random(f"pairs/{self.seed}/{epoch}")
        batches = []
        for name, n in self.pools.items():
            order = rng.sample(range(n), n)
            for start in range(0, n, self.batch_size):
                queries = order[start:start + self.batch_size]
                # uniform over the n - 1 other images, as the official rejection of the query itself:
                # draws at or past the query shift up by one
                supports = [[j + (j >= q) for j in (rng.randrange(n - 1) for _ in range(self.shot))]
                            for q in queries]
                batches.append(Batch(name, queries, supports))
        rng.shuffle(batches)
        return batches
