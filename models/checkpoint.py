"""Checkpoints in the official format ({'STN', 'ENC', 'PRED'}) plus a 'meta' dict, and model loading
shared by test.py and predict.py. Official checkpoints have no meta: their configuration comes from their shapes."""
import math
from pathlib import Path

import torch

from models.backbones import BACKBONES
from models.config import ModelConfig
from models.regad import RegAD
from models.stn import STN_MODES
from utils.errors import UserError
from utils.io import atomic_torch_save, read_torch_file


def save_checkpoint(path, model, meta):
    atomic_torch_save({**model.checkpoint_state(), "meta": {**model.config.as_dict(), **meta}}, path)


def read_checkpoint(path):
    state = read_torch_file(path, "checkpoint", missing="train one with train.py or pass --checkpoint none",
                            unreadable="pass a file saved by train.py")
    if not isinstance(state, dict) or not {"STN", "ENC", "PRED"} <= set(state):
        raise UserError(f"'{path}' is not a RegAD checkpoint (needs 'STN', 'ENC', 'PRED' entries)")
    return state


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
    if wanted in modes:
        stn_mode = wanted
    elif wanted:
        raise UserError(f"checkpoint has {params} STN parameters per stage, as stn_mode {' or '.join(modes)}, but "
                        f"you asked for --stn_mode {wanted}; drop it or use another checkpoint")
    elif len(modes) == 1 or len(named) == 1:
        stn_mode = (named or modes)[0]
    else:
        raise UserError(f"official checkpoint '{path}' has {params} STN parameters per stage, as stn_mode "
                        f"{' and '.join(modes)}; pass --stn_mode {' or --stn_mode '.join(modes)}")
    return ModelConfig(backbones[0], stn_mode, 16 * side)


def check_fits(state, config, path):
    """Every tensor of the checkpoint against the network of config, so a missing tensor is named as missing and
    a mismatch names the options to change (load_state_dict's error says neither)."""
    with torch.device("meta"):
        expected = RegAD(config).checkpoint_state()
    fix = "pass --backbone/--stn_mode/--img_size matching the checkpoint, or another checkpoint"
    for part, tensors in expected.items():
        given = state[part] if isinstance(state[part], dict) else {}
        for key, tensor in tensors.items():
            if not torch.is_tensor(given.get(key)):
                raise UserError(f"checkpoint '{path}' lacks the {part} tensor '{key}'; the file is incomplete or "
                                "damaged: use a complete checkpoint")
            if given[key].shape != tensor.shape:
                raise UserError(f"checkpoint '{path}': {part} tensor '{key}' has shape {tuple(given[key].shape)}, "
                                f"but {config.describe()} needs {tuple(tensor.shape)}; {fix}")
        extra = sorted(set(given) - set(tensors))
        if extra:
            raise UserError(f"checkpoint '{path}' has a {part} tensor '{extra[0]}' that {config.describe()} does "
                            f"not have; {fix}")


def resolve_checkpoint(checkpoint, options):
    """(ModelConfig, meta, state) of a checkpoint ('none': the untrained network, state None), checked to load
    into the network of the config. options are the command line's model settings (ModelConfig.options; None:
    not given); one that conflicts with the checkpoint is an error. No network is built: test.py checks every
    job's checkpoint this way before any compute."""
    asked = {k: v for k, v in options.items() if v is not None}
    if str(checkpoint).lower() == "none":
        config = ModelConfig().with_options(asked)
        return config, {**config.as_dict(), "checkpoint": "none"}, None
    state = read_checkpoint(checkpoint)
    meta = state.get("meta")
    if isinstance(meta, dict):
        config = ModelConfig.from_meta(meta)
    else:
        config, meta = official_config(state["STN"], asked, checkpoint), {"official_format": True}
    if config.with_options(asked) != config:
        raise UserError(f"checkpoint was trained with {config.describe()} but you asked for "
                        f"{config.with_options(asked).describe()}; drop the conflicting options or use another "
                        "checkpoint")
    check_fits(state, config, checkpoint)
    return config, {**config.as_dict(), **meta, "checkpoint": str(checkpoint)}, state


def load_model(checkpoint, options, backbone_weights=None):
    """(model in eval mode, meta). checkpoint 'none' gives the untrained network: ImageNet backbone,
    identity STNs, i.e. the registration-free baseline."""
    config, meta, state = resolve_checkpoint(checkpoint, options)
    model = RegAD(config)
    if state is None:
        model.load_backbone_weights(backbone_weights)
    else:
        model.load_checkpoint_state(state)
    return model.eval(), meta


def checkpoint_path(save_dir, backbone, stn_mode, shot, obj, selected_on_test=False):
    """<save_dir>/<backbone>/ then the official layout <stn_mode>/<shot>/<obj>/<obj>_<shot>_<stn_mode>_model.pt, so
    runs of two backbones never share a file; a test-selected model gets its own name so it never replaces the
    honest last-epoch one. A folder of our earlier layout (without the backbone, with a train_log.json) must be moved
    first; the official code's own files (official_layout_path) may stay where its README puts them."""
    folder = Path(save_dir) / backbone / stn_mode / str(shot) / obj
    legacy = Path(save_dir) / stn_mode / str(shot) / obj
    if (legacy / "train_log.json").is_file() and not folder.is_dir():  # ours; the official files have no log
        raise UserError(f"'{legacy}' has the old layout without a backbone folder; move it to "
                        f"'{Path(save_dir) / '<its backbone>' / stn_mode / str(shot) / obj}' (its backbone is in "
                        "its train_log.json)")
    suffix = "_selected_on_test" if selected_on_test else ""
    return folder / f"{obj}_{shot}_{stn_mode}_model{suffix}.pt"


def official_layout_path(save_dir, stn_mode, shot, obj):
    """Where the official code, and its released save_checkpoints.tar unpacked into the checkout, keep a model:
    <save_dir>/<stn_mode>/<K>/<obj>/<obj>_<K>_<stn_mode>_model.pt, without a backbone folder (all ResNet-18)."""
    return Path(save_dir) / stn_mode / str(shot) / obj / f"{obj}_{shot}_{stn_mode}_model.pt"


def find_checkpoint(save_dir, backbone, stn_mode, shot, obj):
    """train.py's checkpoint of (obj, K): of the given backbone, else of the only backbone trained for it; when
    train.py wrote none, an official checkpoint in the official layout (its backbone comes from its shapes)."""
    stn_mode = stn_mode or ModelConfig.stn_mode
    paths = {b: checkpoint_path(save_dir, b, stn_mode, shot, obj) for b in ([backbone] if backbone else BACKBONES)}
    found = [b for b, path in paths.items() if path.is_file()]
    if len(found) > 1:
        raise UserError(f"{obj} K={shot} has checkpoints of several backbones in '{save_dir}' ({', '.join(found)}); "
                        "pass --backbone")
    official = official_layout_path(save_dir, stn_mode, shot, obj)
    if not found and official.is_file():
        return official
    if not found:
        expected = paths[backbone or ModelConfig.backbone]
        raise UserError(f"checkpoint '{expected}' does not exist; train it with train.py --obj {obj} --shot {shot}"
                        f"{f' --backbone {backbone}' if backbone else ''}, or pass --checkpoint none")
    return paths[found[0]]
