"""Checkpoints in the official format ({'STN', 'ENC', 'PRED'}) plus a 'meta' dict, and model loading
shared by test.py and predict.py."""
import subprocess
from pathlib import Path

import torch

from models.regad import RegAD
from utils.errors import UserError
from utils.io import atomic_torch_save

DEFAULTS = {"backbone": "resnet18", "stn_mode": "rotation_scale", "img_size": 224}
CONFIG_KEYS = tuple(DEFAULTS)


def code_version():
    """Package version plus the git commit when run from a checkout (recorded in every output)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"0.1.0+{commit}" if commit else "0.1.0"


def save_checkpoint(path, model, meta):
    atomic_torch_save({**model.checkpoint_state(), "meta": {**model.config, **meta}}, path)


def read_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; train one with train.py or pass --checkpoint none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}); pass a file saved by train.py")
    if not isinstance(state, dict) or not {"STN", "ENC", "PRED"} <= set(state):
        raise UserError(f"'{path}' is not a RegAD checkpoint (needs 'STN', 'ENC', 'PRED' entries)")
    return state


def describe(config):
    return ", ".join(f"{k}={config[k]}" for k in CONFIG_KEYS)


def resolve_config(meta, requested):
    """Configuration from the checkpoint's meta; a conflicting explicit request is an error."""
    config = {k: meta.get(k, DEFAULTS[k]) for k in CONFIG_KEYS}
    asked = {k: v for k, v in requested.items() if v is not None}
    if any(config[k] != v for k, v in asked.items()):
        raise UserError(f"checkpoint was trained with {describe(config)} but you asked for "
                        f"{describe({**config, **asked})}; drop the conflicting options or use another checkpoint")
    return config


def load_model(checkpoint, requested, backbone_weights=None):
    """(model in eval mode, meta). checkpoint 'none' gives the untrained network: ImageNet backbone,
    identity STNs, i.e. the registration-free baseline."""
    if str(checkpoint).lower() == "none":
        config = {k: requested.get(k) or DEFAULTS[k] for k in CONFIG_KEYS}
        model = RegAD(**config)
        model.load_backbone_weights(backbone_weights)
        return model.eval(), {**config, "checkpoint": "none"}
    state = read_checkpoint(checkpoint)
    meta = state.get("meta", {})
    config = resolve_config(meta, requested)
    model = RegAD(**config)
    try:
        model.load_checkpoint_state(state)
    except RuntimeError:
        raise UserError(f"checkpoint '{checkpoint}' does not fit {describe(config)}; "
                        "pass --backbone/--stn_mode/--img_size matching the checkpoint")
    return model.eval(), {**config, **meta, "checkpoint": str(checkpoint)}


def checkpoint_path(save_dir, stn_mode, shot, obj, selected_on_test=False):
    """The official layout save_checkpoints/<stn_mode>/<shot>/<obj>/<obj>_<shot>_<stn_mode>_model.pt;
    a test-selected model gets its own name so it never replaces the honest last-epoch one."""
    suffix = "_selected_on_test" if selected_on_test else ""
    return Path(save_dir) / stn_mode / str(shot) / obj / f"{obj}_{shot}_{stn_mode}_model{suffix}.pt"
