"""Multi-scale patch embeddings: every backbone stage brought to the finest resolution."""
from typing import NamedTuple

import torch


class StageMaps(NamedTuple):
    """The restored layer1-3 maps of a set of images, each kept at its own resolution ([B, C_i, H_i, W_i],
    finest first). The embedding of a position of the finest grid is the concatenation of every stage's
    vector there, coarser stages repeated (nearest): the official embedding_concat (unfold with
    kernel = stride = s, append the coarse vector to every cell, fold back) only copies each coarse vector
    into its s x s block. Gathering the positions chunk by chunk (rows()) instead of materialising
    the repeated [B, C, H, W] tensor keeps evaluation's temporaries small: the concatenated test embeddings
    alone would be ~10x larger than these maps (C = 448 at 56 x 56 for ResNet-18)."""
    stages: list

    @classmethod
    def of(cls, stages):
        height, width = stages[0].shape[-2:]
        for stage in stages:
            h, w = stage.shape[-2:]
            if height % h or width % w or height // h != width // w:
                raise ValueError(f"stage of size {h}x{w} does not divide the finest size {height}x{width}")
        return cls(list(stages))

    @classmethod
    def cat(cls, parts):
        """The images of several StageMaps (e.g. batches), in order."""
        return cls([torch.cat(stage) for stage in zip(*(p.stages for p in parts))])

    def take(self, index):
        """The images at index (a 1-D index tensor or list), in that order."""
        return StageMaps([stage[index] for stage in self.stages])

    def __len__(self):
        return self.stages[0].shape[0]

    @property
    def shape(self):
        """(H, W) of the finest grid."""
        return tuple(self.stages[0].shape[-2:])

    @property
    def channels(self):
        return sum(stage.shape[1] for stage in self.stages)

    @property
    def coarsest(self):
        """Rows of the finest grid per row of the coarsest stage: chunks of rows start at its multiples."""
        return self.shape[0] // self.stages[-1].shape[-2]

    def rows(self, start, stop):
        """The embeddings at rows start..stop-1 of the finest grid, row-major: [(stop - start) * W, B, C].
        start and stop are multiples of `coarsest` (or stop = H). Each stage is written with one strided
        copy that repeats its vectors over their s x s blocks; no repeated intermediate is made."""
        height, width = self.shape
        first = self.stages[0]
        out = torch.empty(stop - start, width, len(self), self.channels, dtype=first.dtype, device=first.device)
        channel = 0
        for stage in self.stages:
            s = height // stage.shape[-2]
            band = stage[:, :, start // s:stop // s].permute(2, 3, 0, 1)  # [rows, cols, B, C_i]
            target = out[:, :, :, channel:channel + stage.shape[1]].unflatten(1, (-1, s)).unflatten(0, (-1, s))
            target.copy_(band[:, None, :, None])  # target: [rows, s, cols, s, B, C_i]
            channel += stage.shape[1]
        return out.flatten(0, 1)

    def chunks(self, positions):
        """(first flat position, [p, B, C] embeddings) for consecutive chunks of `positions` positions (the
        last may be shorter), covering the grid in row-major order. Rows are gathered a band at a time, the
        band as few rows as the stages' alignment allows."""
        height, width = self.shape
        band = -(-positions // (width * self.coarsest)) * self.coarsest
        for first in range(0, height, band):
            rows = self.rows(first, min(first + band, height))
            for offset in range(0, len(rows), positions):
                yield first * width + offset, rows[offset:offset + positions]
