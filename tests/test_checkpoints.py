"""Checkpoint loading (models.checkpoint): official checkpoints (no meta) of every backbone and stn_mode are
recognised from their shapes, a missing tensor is named, and train.py's layout keeps backbones apart."""
import json

import pytest
import torch

from conftest import copy_category, run_here
from models.backbones import BACKBONES
from models.checkpoint import checkpoint_path, find_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from models.config import ModelConfig
from models.regad import RegAD
from models.stn import STN_MODES
from utils.errors import UserError


@pytest.mark.parametrize("stn_mode", STN_MODES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_official_checkpoints_of_every_backbone_and_stn_mode_load(tmp_path, backbone, stn_mode):
    """The official code saves no meta: backbone and image size come from the shapes; the stn_mode too, unless
    another mode has as many parameters: then from --stn_mode or the official file name, else an error."""
    model = RegAD(ModelConfig(backbone, stn_mode, 32))
    path = tmp_path / "checkpoint.pt"
    torch.save(model.checkpoint_state(), path)
    expected = ModelConfig(backbone, stn_mode, 32)
    params = len(STN_MODES[stn_mode])
    alike = [m for m, identity in STN_MODES.items() if len(identity) == params]
    if len(alike) == 1:
        assert resolve_checkpoint(path, {})[0] == expected
    else:
        with pytest.raises(UserError, match=f"has {params} STN parameters per stage, as stn_mode "
                                            f"{' and '.join(alike)}; pass --stn_mode {alike[0]} or"):
            resolve_checkpoint(path, {})
        named = path.rename(tmp_path / f"bottle_2_{stn_mode}_model.pt")  # the official file name says it
        assert resolve_checkpoint(named, {})[0] == expected
        path = named.rename(path)
    loaded, meta = load_model(path, {"backbone": backbone, "stn_mode": stn_mode})
    assert meta["official_format"] and ModelConfig.from_meta(meta) == expected
    assert torch.equal(loaded.STN.stn3.fc[2].bias, model.STN.stn3.fc[2].bias)


def test_model_config_is_the_one_source_of_settings_and_defaults(tmp_path):
    """train.py's defaults are ModelConfig's; predict.py leaves them to the checkpoint (None); a checkpoint's meta
    gives back the config the network was built from; bad values are one line naming the option."""
    from predict import parse_args as predict_args
    from train import parse_args as train_args
    trained = train_args(["--obj", "bottle", "--data_path", str(tmp_path)])
    assert ModelConfig(**ModelConfig.options(trained)) == ModelConfig("resnet18", "rotation_scale", 224)
    assert set(ModelConfig.options(predict_args(["--images", str(tmp_path)])).values()) == {None}
    config = ModelConfig("efficientnet_lite0", "affine", 64)
    save_checkpoint(tmp_path / "c.pt", RegAD(config), {"shot": 2})
    assert resolve_checkpoint(tmp_path / "c.pt", {})[0] == config
    assert resolve_checkpoint("none", {"img_size": 64, "stn_mode": None})[0] == ModelConfig(img_size=64)
    for bad, message in [({"backbone": "vgg"}, "unknown backbone 'vgg'; choose one of resnet18"),
                         ({"stn_mode": "warp"}, "unknown stn_mode 'warp'; choose one of affine"),
                         ({"img_size": 100}, "--img_size 100 must be a multiple of 16")]:
        with pytest.raises(UserError, match=message):
            ModelConfig(**bad)


def test_asking_for_another_backbone_than_the_official_checkpoint_has_names_both(tmp_path):
    path = tmp_path / "bottle_2_rotation_scale_model.pt"
    torch.save(RegAD(ModelConfig("efficientnet_lite0", "rotation_scale", 32)).checkpoint_state(), path)
    with pytest.raises(UserError, match="trained with backbone=efficientnet_lite0, stn_mode=rotation_scale, "
                                        "img_size=32 but you asked for backbone=resnet18"):
        resolve_checkpoint(path, {"backbone": "resnet18"})
    with pytest.raises(UserError, match="has 2 STN parameters per stage, as stn_mode translation or scale or shear, "
                                        "but you asked for --stn_mode affine"):
        torch.save(RegAD(ModelConfig("efficientnet_lite0", "scale", 32)).checkpoint_state(), path)
        resolve_checkpoint(path, {"stn_mode": "affine"})


@pytest.mark.parametrize("official,key", [(False, "stn2.fc.2.bias"), (True, "stn2.fc.2.bias"),
                                          (True, "stn1.fc.2.weight")])
def test_a_missing_stn_tensor_is_named(tmp_path, official, key):
    model = RegAD(ModelConfig("efficientnet_lite0", "affine", 32))
    state = model.checkpoint_state()
    del state["STN"][key]
    torch.save(state if official else {**state, "meta": model.config.as_dict()}, tmp_path / "c.pt")
    with pytest.raises(UserError, match=f"lacks the STN tensor '{key}'; the file is incomplete or damaged"):
        load_model(tmp_path / "c.pt", {})


def test_test_py_labels_an_official_checkpoint_as_selected_on_test(data_root, tmp_path):
    data = tmp_path / "data"
    copy_category(data_root, "leather", data)
    ckpt = tmp_path / "leather_2_translation_scale_model.pt"
    torch.save(RegAD(ModelConfig("efficientnet_lite0", "translation_scale", 64)).checkpoint_state(), ckpt)
    result = run_here("test.py", "--obj", "leather", "--data_path", data, "--checkpoint", ckpt, "--rounds", "1",
                      "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["backbone"], report["stn_mode"], report["img_size"]) == ("efficientnet_lite0", "translation_scale",
                                                                            64)
    assert report["protocol"] == ("official checkpoint: epoch selected on test-set AUROC by the official code "
                                  "(optimistic)")
    assert report["protocol"] in (tmp_path / "r.md").read_text()


def test_checkpoint_path_has_the_backbone_and_auto_finds_the_only_one(tmp_path):
    lite = checkpoint_path(tmp_path, "efficientnet_lite0", "rotation_scale", 2, "bottle")
    assert lite == tmp_path / "efficientnet_lite0/rotation_scale/2/bottle/bottle_2_rotation_scale_model.pt"
    with pytest.raises(UserError, match=f"checkpoint '{tmp_path}/resnet18/rotation_scale/2/bottle/bottle_2_"
                                        "rotation_scale_model.pt' does not exist; train it with train.py --obj bottle "
                                        "--shot 2, or"):
        find_checkpoint(tmp_path, None, None, 2, "bottle")
    lite.parent.mkdir(parents=True)
    lite.write_bytes(b"")
    assert find_checkpoint(tmp_path, None, None, 2, "bottle") == lite
    resnet = checkpoint_path(tmp_path, "resnet18", "rotation_scale", 2, "bottle")
    resnet.parent.mkdir(parents=True)
    resnet.write_bytes(b"")
    with pytest.raises(UserError, match=r"bottle K=2 has checkpoints of several backbones .* \(resnet18, "
                                        r"efficientnet_lite0\); pass --backbone"):
        find_checkpoint(tmp_path, None, None, 2, "bottle")
    assert find_checkpoint(tmp_path, "efficientnet_lite0", None, 2, "bottle") == lite


def test_the_earlier_layout_without_a_backbone_folder_must_be_moved(tmp_path):
    """Our earlier layout (a train_log.json beside the model) must move; the official code's files (no log) stay."""
    (tmp_path / "rotation_scale" / "2" / "bottle").mkdir(parents=True)
    assert checkpoint_path(tmp_path, "resnet18", "rotation_scale", 2, "bottle").parent.parent.parent.parent.name == \
        "resnet18"
    (tmp_path / "rotation_scale" / "2" / "bottle" / "train_log.json").write_text("{}")
    with pytest.raises(UserError, match=f"'{tmp_path}/rotation_scale/2/bottle' has the old layout without a "
                                        f"backbone folder; move it to '{tmp_path}/<its backbone>/rotation_scale"):
        checkpoint_path(tmp_path, "resnet18", "rotation_scale", 2, "bottle")
