"""Equivalence with the official RegAD code, checked against outputs of that code itself
(../shared/reference/official, see its README): the network's forward in eval and train mode, one complete
training step through train.py's own step, and the test protocol (test.py's evaluate) on bottle K=2.

Relative difference = max |ours - official| / max |official|. Each test runs on the CPU, and on CUDA where
there is a GPU (`python -m pytest -q tests/test_official_equivalence.py` there checks the GPU path)."""
import json

import pytest
import torch

from conftest import DATA, ROOT
from datasets.mvtec import get_category, load_images
from datasets.support_set import support_sets_for
from train import pair_batches, train_step
from models.checkpoint import load_model
from scoring.evaluation import evaluate, load_test_data
from scoring.gaussian import mahalanobis
from scoring.scorers import GaussianScorer
from utils.precision import set_precision

REFERENCE = ROOT.parent / "shared" / "reference" / "official"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture(scope="module")
def reference():
    if not (REFERENCE / "checkpoint.pt").is_file() or not DATA.is_dir():
        pytest.skip(f"official reference outputs or data not found at {REFERENCE}, {DATA}")
    return lambda name: torch.load(REFERENCE / name, map_location="cpu", weights_only=True)


def relative(ours, official):
    """max |ours - official| / max |official| (the plain difference where the official tensor is all zero)."""
    ours, official = ours.detach().cpu().double(), official.double()
    difference, scale = (ours - official).abs().max(), official.abs().max()
    return float(difference / scale if scale > 0 else difference)


def official_model(device):
    """The official-format checkpoint, loaded the way test.py loads any checkpoint."""
    model, meta = load_model(REFERENCE / "checkpoint.pt", {"stn_mode": "rotation_scale"})  # 3 parameters: ambiguous
    assert meta["backbone"] == "resnet18" and "selected_on_test" not in meta
    return model.to(device)


def as_input(images_uint8, device):
    return images_uint8.to(device).float() / 255


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_matches_official(reference, device, mode):
    ref = reference("forward.pt")
    assert torch.equal(load_images([DATA / p for p in ref["paths"]], 224), ref["images_uint8"])  # same decoding
    model = official_model(device).train(mode == "train")
    with torch.no_grad():
        out = model.STN(as_input(ref["images_uint8"], device))
    expected = ref[mode]
    assert relative(out.features, expected["out"]) < 1e-5
    for stage, restored in enumerate(out.restored, start=1):
        assert relative(restored, expected[f"stn{stage}_output"]) < 1e-5
    for theta, official_theta in zip(out.thetas, expected["thetas"], strict=True):
        assert (theta.cpu() - official_theta).abs().max() < 1e-6
    assert (expected["thetas"][0][:, 0, 1] != 0).all()  # the reference STNs really warp


def flat_at(tensor, count):
    """The reference's sample of a tensor: up to 4096 evenly spaced entries of the flattened tensor."""
    n = tensor.numel()
    index = torch.linspace(0, n - 1, min(n, count), dtype=torch.float64).round().long()
    return tensor.detach().flatten().cpu()[index]


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_matches_official(reference, device):
    ref = reference("train_step.pt")
    set_precision("fp32")
    model = official_model(device).train()
    started_at_zero = {name for name, p in model.named_parameters() if not p.any()}  # the BatchNorm biases
    optimiser = torch.optim.SGD(model.parameters(), lr=ref["lr"], momentum=ref["momentum"])
    b, k = ref["support_uint8"].shape[:2]
    stack = torch.cat([ref["query_uint8"], ref["support_uint8"].flatten(0, 1)]).to(device)
    batch = ("screw", torch.arange(b), (b + torch.arange(b * k).view(b, k)).tolist())
    query, support = next(pair_batches([batch], {"screw": stack}, device))
    loss = train_step(model, optimiser, query, support, "fp32")

    assert abs(loss.item() - ref["loss"]) <= 1e-6 * abs(ref["loss"])
    params = dict(model.named_parameters())
    assert set(params) == set(ref["params"]) | set(ref["no_grad"])
    for name in ref["no_grad"]:  # the encoder's unused bn3, as in the official code
        assert params[name].grad is None
    for name, expected in ref["params"].items():
        grad = params[name].grad
        sample = flat_at(grad, len(expected["grad"])).double()
        cosine = sample @ expected["grad"].double() / (sample.norm() * expected["grad"].double().norm())
        assert cosine >= 0.99999, name
        assert abs(grad.norm().item() - expected["grad_norm"]) <= 1e-4 * expected["grad_norm"], name
        # a parameter that started at 0 is one update, -lr * grad, after the step: it carries the gradient's own
        # float32 rounding (measured up to 1.1e-6), so it gets the gradient's tolerance
        tolerance = 1e-5 if name in started_at_zero else 1e-6
        assert relative(flat_at(params[name], len(expected["after"])), expected["after"]) < tolerance, name
    buffers = dict(model.named_buffers())
    for name, expected in ref["buffers_after"].items():
        if name.endswith("num_batches_tracked"):
            assert buffers[name].item() == expected.item(), name
        else:
            assert relative(buffers[name], expected) < 1e-5, name


@pytest.mark.parametrize("device", DEVICES)
def test_test_protocol_matches_official(reference, device):
    ref = reference("test_bottle_2_2.pt")
    official = json.loads((REFERENCE / "official_results.json").read_text())["bottle_2"]["rounds"]
    category = get_category(DATA, "bottle", need_test=True)
    test = load_test_data(category, 224)
    assert [str(item.path.relative_to(DATA)) for item in test.items] == ref["test_images"]
    assert test.labels.tolist() == ref["labels"].tolist()
    supports = support_sets_for(category, 2, len(official), 668, None, 224,
                                explicit=REFERENCE / "support_bottle_2_2.pt")
    scorer = GaussianScorer(official_model(device), torch.device(device))
    maps = []
    result = evaluate(scorer, test, supports, on_round=lambda index, metrics, round_maps, scores: maps.append(round_maps))
    embeddings = scorer.embed(test.images)
    for support, ours, round_maps, expected, official_round in zip(supports, result["rounds"], maps, ref["rounds"],
                                                                   official, strict=True):
        assert abs(ours["image_auroc"] - official_round["image_auroc"]) <= 1e-6
        assert abs(ours["pixel_auroc"] - official_round["pixel_auroc"]) <= 1e-6
        distances = mahalanobis(scorer.fit(support), embeddings)
        assert relative(distances, expected["dist"]) < 1e-4
        round_maps = torch.from_numpy(round_maps)
        assert relative(round_maps[expected["map_index"]], expected["maps"]) < 1e-4
        assert relative(round_maps.flatten(1).amax(1), expected["image_scores_raw"]) < 1e-4
