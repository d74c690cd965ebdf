"""Multi-scale patch embeddings: every backbone stage brought to the finest resolution."""
import torch


def concat_stages(stages):
    """[B,C1,H,W], [B,C2,H/2,W/2], ... -> [B,C1+C2+...,H,W], coarser maps nearest-neighbour repeated.

    Equal to the official embedding_concat (unfold with kernel = stride = s, append the coarse vector
    to every cell, fold back), which only copies each coarse vector into its s x s block.
    """
    height, width = stages[0].shape[-2:]
    upsampled = []
    for stage in stages:
        h, w = stage.shape[-2:]
        if height % h or width % w or height // h != width // w:
            raise ValueError(f"stage of size {h}x{w} does not divide the finest size {height}x{width}")
        s = height // h
        upsampled.append(stage.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3))
    return torch.cat(upsampled, dim=1)
