"""Checkpoints in the official format ({'STN', 'ENC', 'PRED'}) plus a 'meta' dict, and model loading
shared by test.py and predict.py. Official checkpoints have no meta: their configuration comes from their shapes."""
import math
import subprocess
from pathlib import Path

import torch

from models.regad import RegAD
from models.backbones import BACKBONES
from models.stn import STN_MODES
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


def stage_channels(backbone):
    with torch.device("meta"):  # shapes only, nothing allocated
        return BACKBONES[backbone].stages()[2]


def official_config(stn, asked, path):
    """Configuration of a checkpoint saved by the official code (it has no meta), from its shapes: the STN
    convolutions' input channels give the backbone, fc[0]'s input size the image size, fc[2]'s output size the
    number of STN parameters. Modes with as many parameters (rotation_scale and rotation_translation have 3)
    are told apart by --stn_mode, else by the official file name <obj>_<K>_<stn_mode>_model.pt."""
    try:
        channels = tuple(stn[f"stn{i}.conv.0.weight"].shape[1] for i in (1, 2, 3))
        side = math.isqrt(stn["stn1.fc.0.weight"].shape[1] // 16)
        params = stn["stn1.fc.2.weight"].shape[0]
    except KeyError as exc:
        raise UserError(f"checkpoint '{path}' lacks the STN tensor '{exc.args[0]}'; the file is incomplete or "
                        "damaged: use a complete checkpoint")
    backbones = [b for b in BACKBONES if stage_channels(b) == channels]
    if not backbones:
        raise UserError(f"checkpoint '{path}' has STN input channels {channels}, which fit no backbone "
                        f"({', '.join(f'{b} {stage_channels(b)}' for b in BACKBONES)}); pass a RegAD checkpoint")
    modes = [m for m, identity in STN_MODES.items() if len(identity) == params]
    if not modes:
        raise UserError(f"checkpoint '{path}' has {params} STN parameters per stage, which fits no stn_mode; "
                        "pass a RegAD checkpoint")
    named = [m for m in modes if f"_{m}_model" in Path(path).name]
    wanted = asked.get("stn_mode")
    if wanted:  # one that does not fit is reported by the caller as a conflict
        stn_mode = wanted if wanted in modes else " or ".join(modes)
    elif len(modes) == 1 or len(named) == 1:
        stn_mode = (named or modes)[0]
    else:
        raise UserError(f"official checkpoint '{path}' has {params} STN parameters per stage, as stn_mode "
                        f"{' and '.join(modes)}; pass --stn_mode {' or --stn_mode '.join(modes)}")
    return {"backbone": backbones[0], "stn_mode": stn_mode, "img_size": 16 * side}


def check_fits(state, config, path):
    """Every tensor of the checkpoint against the network of config, so a missing tensor is named as missing and
    a mismatch names the options to change (load_state_dict's error says neither)."""
    with torch.device("meta"):
        expected = RegAD(**config).checkpoint_state()
    fix = "pass --backbone/--stn_mode/--img_size matching the checkpoint, or another checkpoint"
    for part, tensors in expected.items():
        given = state[part] if isinstance(state[part], dict) else {}
        for key, tensor in tensors.items():
            if not torch.is_tensor(given.get(key)):
                raise UserError(f"checkpoint '{path}' lacks the {part} tensor '{key}'; the file is incomplete or "
                                "damaged: use a complete checkpoint")
            if given[key].shape != tensor.shape:
                raise UserError(f"checkpoint '{path}': {part} tensor '{key}' has shape {tuple(given[key].shape)}, "
                                f"but {describe(config)} needs {tuple(tensor.shape)}; {fix}")
        extra = sorted(set(given) - set(tensors))
        if extra:
            raise UserError(f"checkpoint '{path}' has a {part} tensor '{extra[0]}' that {describe(config)} does "
                            f"not have; {fix}")


def resolve_checkpoint(checkpoint, requested):
    """(config, meta, state) of a checkpoint ('none': the untrained network, state None), checked to load into
    the network of config; an explicit request that conflicts with the checkpoint is an error. No network is
    built: test.py checks every job's checkpoint this way before any compute."""
    asked = {k: v for k, v in requested.items() if v is not None}
    if str(checkpoint).lower() == "none":
        config = {**DEFAULTS, **asked}
        return config, {**config, "checkpoint": "none"}, None
    state = read_checkpoint(checkpoint)
    meta = state.get("meta")
    if isinstance(meta, dict):
        config = {k: meta.get(k, DEFAULTS[k]) for k in CONFIG_KEYS}
    else:
        config, meta = official_config(state["STN"], asked, checkpoint), {"official_format": True}
    if any(config[k] != v for k, v in asked.items()):
        raise UserError(f"checkpoint was trained with {describe(config)} but you asked for "
                        f"{describe({**config, **asked})}; drop the conflicting options or use another checkpoint")
    check_fits(state, config, checkpoint)
    return config, {**config, **meta, "checkpoint": str(checkpoint)}, state


def load_model(checkpoint, requested, backbone_weights=None):
    """(model in eval mode, meta). checkpoint 'none' gives the untrained network: ImageNet backbone,
    identity STNs, i.e. the registration-free baseline."""
    config, meta, state = resolve_checkpoint(checkpoint, requested)
    model = RegAD(**config)
    if state is None:
        model.load_backbone_weights(backbone_weights)
    else:
        model.load_checkpoint_state(state)
    return model.eval(), meta


def checkpoint_path(save_dir, backbone, stn_mode, shot, obj, selected_on_test=False):
    """<save_dir>/<backbone>/ then the official layout <stn_mode>/<shot>/<obj>/<obj>_<shot>_<stn_mode>_model.pt, so
    runs of two backbones never share a file; a test-selected model gets its own name so it never replaces the
    honest last-epoch one. A folder of the earlier layout (without the backbone) must be moved first."""
    folder = Path(save_dir) / backbone / stn_mode / str(shot) / obj
    legacy = Path(save_dir) / stn_mode / str(shot) / obj
    if legacy.is_dir() and not folder.is_dir():
        raise UserError(f"'{legacy}' has the old layout without a backbone folder; move it to "
                        f"'{Path(save_dir) / '<its backbone>' / stn_mode / str(shot) / obj}' (its backbone is in "
                        "its train_log.json)")
    suffix = "_selected_on_test" if selected_on_test else ""
    return folder / f"{obj}_{shot}_{stn_mode}_model{suffix}.pt"


def find_checkpoint(save_dir, backbone, stn_mode, shot, obj):
    """train.py's checkpoint of (obj, K): of the given backbone, else of the only backbone trained for it."""
    stn_mode = stn_mode or DEFAULTS["stn_mode"]
    paths = {b: checkpoint_path(save_dir, b, stn_mode, shot, obj) for b in ([backbone] if backbone else BACKBONES)}
    found = [b for b, path in paths.items() if path.is_file()]
    if len(found) > 1:
        raise UserError(f"{obj} K={shot} has checkpoints of several backbones in '{save_dir}' ({', '.join(found)}); "
                        "pass --backbone")
    if not found:
        expected = paths[backbone or DEFAULTS["backbone"]]
        raise UserError(f"checkpoint '{expected}' does not exist; train it with train.py --obj {obj} --shot {shot}"
                        f"{f' --backbone {backbone}' if backbone else ''}, or pass --checkpoint none")
    return paths[found[0]]
