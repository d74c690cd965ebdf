"""The RegAD model: registration network (STN), encoder (ENC) and predictor (PRED) together.

The three parts keep the official checkpoint's names, so a checkpoint is {'STN', 'ENC', 'PRED'}
state dicts (plus our 'meta').
"""
import torch.nn as nn

from losses.norm_loss import symmetric_loss
from models.backbones import BACKBONES
from models.config import ModelConfig
from models.siamese import Encoder, Predictor
from models.stn import STNNet
from utils.errors import UserError


class RegAD(nn.Module):
    def __init__(self, config=ModelConfig()):
        super().__init__()
        self.config = config
        self.STN = STNNet(config)
        channels = self.STN.stage_channels[-1]
        self.ENC = Encoder(channels)
        self.PRED = Predictor(channels)

    def load_backbone_weights(self, weights=None):
        """ImageNet weights for the backbone part of STN ('random' keeps the random init); says which."""
        backbone = self.config.backbone
        if weights == "random":
            print(f"{backbone}: random initialisation (no ImageNet weights)")
            return
        state, source = BACKBONES[backbone].weights(weights)
        own = self.STN.state_dict()
        needed = [k for k in own if not k.startswith("stn")]
        for key in needed:
            if key not in state:
                raise UserError(f"backbone weights '{source}' lack '{key}'; pass a torchvision-format {backbone} "
                                "state dict (stem to layer3 at least)")
            if state[key].shape != own[key].shape:
                raise UserError(f"backbone weights '{source}': '{key}' has shape {tuple(state[key].shape)}, "
                                f"{backbone} needs {tuple(own[key].shape)}; pass {backbone} weights")
        self.STN.load_state_dict({k: state[k] for k in needed}, strict=False)
        print(f"{backbone}: ImageNet weights from {source} ({len(needed)} tensors, stem to layer3)")

    def loss(self, query, support):
        """Training objective. query [B, 3, H, W], support [B, K, 3, H, W], images in [0, 1]."""
        b, k = support.shape[:2]
        # two passes, as the paper: BatchNorm sees each set alone; the restored maps are not needed here
        query_feat = self.STN(query, restore=False).features
        support_feat = self.STN(support.flatten(0, 1), restore=False).features.unflatten(0, (b, k)).mean(1)
        z_query, z_support = self.ENC(query_feat), self.ENC(support_feat)
        return symmetric_loss(self.PRED(z_query), z_query, self.PRED(z_support), z_support)

    def checkpoint_state(self):
        return {"STN": self.STN.state_dict(), "ENC": self.ENC.state_dict(), "PRED": self.PRED.state_dict()}

    def load_checkpoint_state(self, state):
        for part in ("STN", "ENC", "PRED"):
            getattr(self, part).load_state_dict(state[part], strict=True)
