"""The three settings that fix the network's shape, in one typed object: RegAD and STNNet are built from it,
checkpoints record it in their meta, and the command lines take their options and defaults from it."""
from dataclasses import asdict, dataclass, fields, replace

from models.backbones import BACKBONES
from models.stn import STN_MODES
from utils.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"        # the paper's
    stn_mode: str = "rotation_scale"  # the paper's default
    img_size: int = 224

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise UserError(f"unknown backbone '{self.backbone}'; choose one of {', '.join(BACKBONES)}")
        if self.stn_mode not in STN_MODES:
            raise UserError(f"unknown stn_mode '{self.stn_mode}'; choose one of {', '.join(STN_MODES)}")
        if self.img_size % 16 or self.img_size < 32:
            raise UserError(f"--img_size {self.img_size} must be a multiple of 16 and at least 32")

    @classmethod
    def keys(cls):
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_meta(cls, meta):
        """A checkpoint's meta (or any dict with extra keys); missing settings take the defaults."""
        return cls(**{k: meta[k] for k in cls.keys() if k in meta})

    def as_dict(self):
        return asdict(self)

    def with_options(self, options):
        """This configuration with the settings of `options` (a dict; None values ignored) replaced."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})

    def describe(self):
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())

    @classmethod
    def add_args(cls, parser, defaults):
        """--backbone, --backbone_weights, --stn_mode, --img_size. With defaults (training) they default to this
        class's; without, None means 'the checkpoint's' (or this class's for the untrained network)."""
        default = cls().as_dict() if defaults else dict.fromkeys(cls.keys())
        parser.add_argument("--backbone", choices=BACKBONES, default=default["backbone"],
                            help=f"default {cls.backbone} (the paper's), or the checkpoint's")
        parser.add_argument("--backbone_weights", help="resnet18 ImageNet state dict (resnet18-f37072fd.pth); "
                                                       "'random' for a random init")
        parser.add_argument("--stn_mode", choices=list(STN_MODES), default=default["stn_mode"])
        parser.add_argument("--img_size", type=int, default=default["img_size"])

    @classmethod
    def options(cls, args):
        """The settings given on a command line ({key: value or None})."""
        return {k: getattr(args, k) for k in cls.keys()}
