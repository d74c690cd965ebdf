"""Network tests: STN identity and restoration, official checkpoint layout, backbones, one train step."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from conftest import run_cli
from models.config import ModelConfig
from models.efficientnet_lite import EfficientNetLiteClassifier
from models.regad import RegAD
from models.stn import STN_MODES, STNModule, invert_theta, params_to_theta, warp
from scoring.scorers import GaussianScorer
from utils.cli import pick_device
from utils.precision import autocast

# A non-trivial transform per mode: (parameters, expected 2x3 matrix written out by hand).
c, s = math.cos(0.2), math.sin(0.2)
HAND_MADE = {
    "affine": ([0.9, 0.1, 0.05, -0.1, 1.1, -0.05], [[0.9, 0.1, 0.05], [-0.1, 1.1, -0.05]]),
    "translation": ([0.1, -0.05], [[1, 0, 0.1], [0, 1, -0.05]]),
    "rotation": ([0.2], [[c, -s, 0], [s, c, 0]]),
    "scale": ([0.9, 1.1], [[0.9, 0, 0], [0, 1.1, 0]]),
    "shear": ([0.1, -0.1], [[1, 0.1, 0], [-0.1, 1, 0]]),
    "rotation_scale": ([0.2, 0.9, 1.1], [[c * 0.9, -s, 0], [s, c * 1.1, 0]]),
    "translation_scale": ([0.1, -0.05, 0.9, 1.1], [[0.9, 0, 0.1], [0, 1.1, -0.05]]),
    "rotation_translation": ([0.2, 0.1, -0.05], [[c, -s, 0.1], [s, c, -0.05]]),
    "rotation_translation_scale": ([0.2, 0.1, -0.05, 0.9, 1.1], [[c * 0.9, -s, 0.1], [s, c * 1.1, -0.05]]),
}


def smooth_maps(size=56, channels=3):
    """Low-frequency feature maps f(u, v) on the normalised pixel-centre grid, plus f itself."""
    def f(u, v):
        return torch.stack([torch.sin(1.3 * u + 0.5 * v), torch.cos(0.7 * u - 1.1 * v), u * v][:channels])
    coords = (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: rows (y), u: columns (x)
    return f(u, v)[None].float(), f, u, v


def test_every_mode_is_covered():
    assert set(HAND_MADE) == set(STN_MODES)


@pytest.mark.parametrize("mode", list(STN_MODES))
def test_stn_is_identity_at_initialisation(mode):
    torch.manual_seed(0)
    stn = STNModule(channels=8, feature_size=28, mode=mode).eval()
    x = torch.randn(2, 8, 28, 28)
    out, theta = stn(x)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3), atol=1e-7)
    # float32 grid arithmetic leaves ~1e-6 relative interpolation weight on neighbours
    assert (out - x).abs().max() <= 1e-5 * x.abs().max()


@pytest.mark.parametrize("mode", list(STN_MODES))
def test_hand_made_theta_and_restoration(mode):
    params, expected = HAND_MADE[mode]
    theta = params_to_theta(torch.tensor([params]), mode)
    assert torch.allclose(theta, torch.tensor([expected], dtype=torch.float32), atol=1e-6)

    x, f, u, v = smooth_maps()
    warped = warp(x, theta)
    # Direct reference: output(u, v) = f(theta @ [u, v, 1]) where that point lies inside the map.
    t = theta[0].double()
    su, sv = t[0, 0] * u + t[0, 1] * v + t[0, 2], t[1, 0] * u + t[1, 1] * v + t[1, 2]
    inside = (su.abs() < 0.9) & (sv.abs() < 0.9)
    assert inside.sum() > 1000
    assert (warped[0] - f(su, sv).float())[:, inside].abs().max() < 2e-3

    restored = warp(warped, invert_theta(theta))
    centre = (u.abs() < 0.5) & (v.abs() < 0.5)
    assert (restored[0] - x[0])[:, centre].abs().max() < 2e-3
    assert (warped[0] - x[0])[:, centre].abs().max() > 2e-2  # the transform really moved things


def test_transform_stays_float32_under_bf16_autocast():
    """bf16 would round the scale 1.003 to 1.0 and move the sampling grid by up to a quarter pixel."""
    stn = STNModule(channels=8, feature_size=28, mode="rotation_scale").eval()
    params = torch.tensor([[0.01, 1.003, 0.997]])
    with torch.no_grad():
        stn.fc[2].bias.copy_(params[0])  # the fc weight is zero: theta is exactly this bias
    x = torch.randn(2, 8, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, theta = stn(x)
    expected = params_to_theta(params, "rotation_scale").expand(2, 2, 3)
    assert theta.dtype == out.dtype == torch.float32
    assert torch.allclose(theta, expected, atol=1e-7)
    assert torch.allclose(out, warp(x, expected), atol=1e-6)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_memory_format_does_not_change_the_outputs(backbone):
    """The layout is a speed choice only (bench/train_speed.py): channels_last for evaluation, and in training
    NCHW for resnet18 (a step equals the official one) and channels_last for Lite."""
    torch.manual_seed(0)
    model = RegAD(ModelConfig(backbone, "rotation_scale", img_size=64))
    convs = [p for p in model.STN.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    train_layout = torch.contiguous_format if backbone == "resnet18" else torch.channels_last
    assert all(p.is_contiguous(memory_format=train_layout) for p in convs)
    model.eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    with torch.no_grad():
        model.STN.stn2.fc[2].bias.copy_(torch.tensor([0.1, 0.95, 1.05]))
        x = torch.rand(2, 3, 64, 64)
        last, restored, _ = model.STN(x)
        model.STN.use_memory_format(torch.contiguous_format)
        assert all(p.is_contiguous() for p in convs)
        plain_last, plain_restored, _ = model.STN(x)
    for a, b in zip([last, *restored], [plain_last, *plain_restored]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max())


def test_training_forward_skips_the_restored_maps():
    """restore=False (what RegAD.loss uses) gives the same features and thetas, without the inverse warps."""
    torch.manual_seed(0)
    model = RegAD(ModelConfig("resnet18", "rotation_scale", img_size=64)).train()
    with torch.no_grad():
        model.STN.stn1.fc[2].bias.copy_(torch.tensor([0.1, 0.95, 1.05]))
        x = torch.rand(2, 3, 64, 64)
        full, lean = model.STN(x), model.STN(x, restore=False)
    assert lean.restored is None and len(full.restored) == 3
    assert torch.equal(full.features, lean.features)
    assert all(torch.equal(a, b) for a, b in zip(full.thetas, lean.thetas, strict=True))


def test_restoration_composes_inverses_in_reverse_order():
    """Stage 2 is warped by theta1 then theta2; restoring needs inv(theta2) first, then inv(theta1)."""
    x = smooth_maps()[0]
    theta1 = params_to_theta(torch.tensor([[0.2, 0.9, 1.1]]), "rotation_scale")
    theta2 = params_to_theta(torch.tensor([[0.1, -0.05, 0.95, 1.05]]), "translation_scale")
    twice = warp(warp(x, theta1), theta2)
    centre = (slice(None), slice(None), slice(18, 38), slice(18, 38))
    right = warp(warp(twice, invert_theta(theta2)), invert_theta(theta1))
    wrong = warp(warp(twice, invert_theta(theta1)), invert_theta(theta2))
    assert (right - x)[centre].abs().max() < 3e-3
    assert (wrong - x)[centre].abs().max() > 10 * (right - x)[centre].abs().max()


def official_state_dict(stn_params=3):
    """The official checkpoint layout, written out from its known key list and shapes."""
    def conv(out, cin, k):
        return {"weight": torch.randn(out, cin, k, k)}

    def bn(ch):
        return {"weight": torch.rand(ch), "bias": torch.randn(ch), "running_mean": torch.randn(ch),
                "running_var": torch.rand(ch) + 0.5, "num_batches_tracked": torch.tensor(7)}

    def put(sd, prefix, params):
        sd.update({f"{prefix}.{k}": v for k, v in params.items()})

    stn = {}
    put(stn, "conv1", conv(64, 3, 7))
    put(stn, "bn1", bn(64))
    for layer, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256)], start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            put(stn, f"{p}.conv1", conv(cout, cin if block == 0 else cout, 3))
            put(stn, f"{p}.bn1", bn(cout))
            put(stn, f"{p}.conv2", conv(cout, cout, 3))
            put(stn, f"{p}.bn2", bn(cout))
            if layer > 1 and block == 0:
                put(stn, f"{p}.downsample.0", conv(cout, cin, 1))
                put(stn, f"{p}.downsample.1", bn(cout))
        feat = 56 // (4 * layer)  # the official STNModule's feature size
        put(stn, f"stn{layer}.conv.0", conv(64, cout, 3))
        put(stn, f"stn{layer}.conv.1", bn(64))
        put(stn, f"stn{layer}.conv.4", conv(16, 64, 3))
        put(stn, f"stn{layer}.conv.5", bn(16))
        put(stn, f"stn{layer}.fc.0", {"weight": torch.randn(1024, 16 * feat * feat), "bias": torch.randn(1024)})
        put(stn, f"stn{layer}.fc.2", {"weight": torch.randn(stn_params, 1024), "bias": torch.randn(stn_params)})
    enc, pred = {}, {}
    for i in (1, 2, 3):
        put(enc, f"conv{i}", conv(256, 256, 1))
        put(enc, f"bn{i}", bn(256))
    put(pred, "conv1", conv(256, 256, 1))
    put(pred, "bn1", bn(256))
    put(pred, "conv2", conv(256, 256, 1))
    return {"STN": stn, "ENC": enc, "PRED": pred}


def test_official_checkpoint_layout_loads_strictly():
    state = official_state_dict()
    model = RegAD(ModelConfig("resnet18", "rotation_scale", 224))
    model.load_checkpoint_state(state)  # strict=True inside
    assert torch.equal(model.STN.stn3.fc[0].weight, state["STN"]["stn3.fc.0.weight"])
    assert torch.equal(model.ENC.bn3.running_var, state["ENC"]["bn3.running_var"])


def test_official_layout_does_not_fit_another_configuration():
    with pytest.raises(RuntimeError):
        RegAD(ModelConfig("resnet18", "affine", 224)).load_checkpoint_state(official_state_dict())


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite2"])
def test_efficientnet_lite_weights_classify_a_cat(variant):
    image = Image.fromarray(skdata.chelsea()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        top5 = EfficientNetLiteClassifier(variant).eval()(x).topk(5).indices[0].tolist()
    assert {281, 282, 285} & set(top5[:1]), top5  # the top-1 class is a cat (tabby/tiger/Egyptian)
    assert {281, 282, 285} <= set(top5)


@pytest.mark.parametrize("variant,channels", [("efficientnet_lite0", (24, 40, 112)),
                                               ("efficientnet_lite2", (24, 48, 120))])
def test_efficientnet_stages_have_strides_4_8_16(variant, channels):
    model = RegAD(ModelConfig(variant, "rotation_scale", 224)).eval()
    model.load_backbone_weights()
    with torch.no_grad():
        last, restored, _ = model.STN(torch.rand(1, 3, 224, 224))
    assert [tuple(r.shape[1:]) for r in restored] == [(channels[0], 56, 56), (channels[1], 28, 28),
                                                      (channels[2], 14, 14)]
    assert last.shape == (1, channels[2], 14, 14)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_training_step_lowers_the_loss_and_reaches_every_parameter(precision):
    torch.manual_seed(0)
    model = RegAD(ModelConfig("resnet18", "rotation_scale", img_size=64)).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = [(torch.rand(4, 3, 64, 64), torch.rand(4, 2, 3, 64, 64)) for _ in range(2)]

    def total_loss():
        with autocast(torch.device("cpu"), precision):
            return sum(model.loss(q, s) for q, s in batches)

    before = total_loss()
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    # At the identity initialisation only the STN's last fc layer gets gradient (the rest is multiplied
    # by its zero weights); after one step every parameter must receive gradient.
    optimiser.zero_grad()
    after = total_loss()
    after.backward()
    assert after.item() < before.item()
    unused = {"ENC.bn3.weight", "ENC.bn3.bias"}  # defined but unused by the official encoder
    for name, param in model.named_parameters():
        if name in unused:
            continue
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_float32_is_strict_outside_a_reduced_precision_step():
    """PyTorch's default runs CUDA convolutions in TF32 (3e-3 relative on layer3): picking a device switches
    TF32 off, and train.py's --precision tf32 turns it on for the training step alone."""
    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # PyTorch's cuDNN default
    device = pick_device("cpu")
    assert flags() == (False, False)
    with autocast(device, "tf32"):
        assert flags() == (True, True)
    assert flags() == (False, False)
    with pytest.raises(ZeroDivisionError), autocast(device, "tf32"):
        1 / 0
    assert flags() == (False, False)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    GaussianScorer(RegAD(ModelConfig("resnet18", "rotation_scale", 64)), device)  # the library's way in, too
    assert flags() == (False, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_give_the_same_outputs():
    torch.manual_seed(0)
    device = pick_device("cuda")  # strict float32: TF32 convolutions alone differ by ~1e-3
    model = RegAD(ModelConfig("resnet18", "rotation_scale", 224)).eval()
    with torch.no_grad():
        model.STN.stn1.fc[2].bias.copy_(torch.tensor([0.1, 0.95, 1.05]))
        x = torch.rand(2, 3, 224, 224)
        cpu_last, cpu_restored, _ = model.STN(x)
        gpu_last, gpu_restored, _ = model.to(device).STN(x.to(device))
    assert torch.allclose(cpu_last, gpu_last.cpu(), atol=1e-4)
    for a, b in zip(cpu_restored, gpu_restored):
        assert torch.allclose(a, b.cpu(), atol=1e-4)


def test_train_memory_bench_runs_train_py_step():
    """bench/train_memory.py's child: train.py's model, optimiser and train_step, then its peak RSS in bytes."""
    result = run_cli("bench/train_memory.py", "--child", "efficientnet_lite0", "2", "2", "--img_size", "64",
                     check=True)
    assert 2**27 < json.loads(result.stdout.splitlines()[-1])["peak_rss"] < 2**33  # 128 MiB .. 8 GiB
