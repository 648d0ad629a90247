"""Adversarial patch and adversarial reprogramming: properties, learning on tiny models, validation."""

import importlib.util

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.patch import AdversarialPatch, paste_patch, patch_side, random_locations, render_through_canvas
from attacks.reprogramming import (MOVES, AdversarialProgram, AdversarialReprogramming, Reprogrammed, jitter_sources, moved,
                                   reprogrammed_accuracy, reprogrammed_log_probs)
from test_attacks_models import mnist_14, trained_mlp


def detector(seed: int = 0, channels: int = 3, classes: int = 10) -> nn.Module:
    """A random conv filter bank with a global max-pool: logit k is filter k's strongest response anywhere.

    Translation invariant, as the CNNs patches are made for; a patch must find a
    pattern that fires filter k more than every other filter.
    """
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, classes, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten()).eval()


def low_contrast_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.25 + 0.5 * torch.rand(n, 3, 16, 16, generator=g)


def test_patch_changes_the_image_only_inside_its_mask_and_stays_in_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    patch = (torch.rand(3, 5, 5, generator=g) > 0.5).float()  # extreme values: 0 and 1 only
    rows, cols = random_locations(8, 5, 16, 16, g, x.device)
    upright, mask = paste_patch(x, patch, rows, cols)
    assert set(mask.unique().tolist()) == {0.0, 1.0} and (mask.sum((1, 2, 3)) == 25).all()
    for i in range(8):
        r, c = int(rows[i]), int(cols[i])
        assert torch.equal(upright[i, :, r:r + 5, c:c + 5], patch)
    assert torch.equal(upright * (1 - mask), x * (1 - mask))
    for nearest in (0.0, 0.5, 1.0):
        eot = AdversarialPatch(rotation=45, min_scale=0.5, brightness=0.3, contrast=0.3, blur=1.0, nearest=nearest)
        x_adv, mask = paste_patch(x, patch, rows, cols, **eot.transforms(8, x, g))
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert ((x_adv != x) <= (mask > 0)).all(), "a pixel outside the mask changed"
        assert (mask.sum((1, 2, 3)) <= 25 + 1).all(), "a transformed patch exceeds its budget (by more than an edge pixel)"
        assert (mask > 0).float().sum((1, 2, 3)).min() > 0


def test_canvas_paste_is_the_patch_itself_where_the_pitches_agree_and_stays_in_its_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    patch = torch.rand(3, 4, 4, generator=g)
    rows, cols = random_locations(6, 4, 16, 16, g, x.device)
    upright, _ = paste_patch(x, patch, rows, cols)
    # a 4x4 patch on a 16x16 canvas is 4x4 blocks: at scale 1, no turn and an integer location both resamplings agree
    aligned, mask = paste_patch(x, patch, rows, cols, scale=torch.ones(6), canvas=torch.ones(6, dtype=torch.bool))
    assert torch.equal(aligned, upright) and (mask.sum((1, 2, 3)) == 16).all()
    eot = AdversarialPatch(rotation=45, min_scale=0.5, brightness=0, contrast=0, blur=0, canvas=1.0)
    draws = eot.transforms(6, x, g)
    assert draws["canvas"].all()
    x_adv, mask = paste_patch(x, patch, rows, cols, **draws)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}, "nearest-neighbour rendering leaves no partial mask"
    assert ((x_adv != x) <= (mask > 0)).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    colours = {tuple(v) for v in patch.flatten(1).T.tolist()}
    inside = x_adv.permute(0, 2, 3, 1)[mask[:, 0] > 0]
    assert all(tuple(v) in colours for v in inside.tolist()), "every pasted pixel is one of the patch's pixels"
    none = paste_patch(x, patch, rows, cols, **{**draws, "canvas": torch.zeros(6, dtype=torch.bool)})[0]
    assert not torch.equal(none, x_adv)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="compares with torchvision's affine")
def test_canvas_rendering_matches_arts_apply_patch_pixel_for_pixel():
    """ART's AdversarialPatchPyTorch._random_overlay: the patch on a canvas of the image's side, then
    torchvision.transforms.functional.affine(angle, translate, scale, nearest) about the image's centre."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.patch_vs_art import import_torchvision

    import_torchvision()  # also where the wheel was built for another torch
    import torchvision.transforms.functional as TF
    g = torch.Generator().manual_seed(0)
    ink = torch.cat([torch.rand(3, 10, 10, generator=g), torch.ones(1, 10, 10)])[None]
    canvas = F.interpolate(ink, size=(32, 32), mode="nearest")[0]
    for _ in range(10):
        tx, ty, turn = (torch.rand(3, generator=g) * torch.tensor([20, 20, 45]) - torch.tensor([10, 10, 22.5])).tolist()
        scale = 0.25 + 0.0625 * float(torch.rand(1, generator=g))
        art = TF.affine(canvas, angle=turn, translate=[tx, ty], scale=scale, shear=[0, 0],
                        interpolation=TF.InterpolationMode.NEAREST)
        ours = render_through_canvas(ink, 32, 32, torch.tensor([[15.5 + tx, 15.5 + ty]]), torch.tensor([turn]),
                                     torch.tensor([scale]))[0]
        assert torch.equal(ours, art)


def test_full_resolution_patch_shows_at_most_its_budget_and_a_changing_subsample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=g)
    stored = torch.rand(3, 16, 16, generator=g)  # kept at the image's resolution, pasted as a 4x4 square
    eot = AdversarialPatch(rotation=0, min_scale=1.0, brightness=0, contrast=0, blur=0, full_resolution=True)
    rows, cols = random_locations(64, 4, 16, 16, g, x.device)
    x_adv, mask = paste_patch(x, stored, rows, cols, side=4, **eot.transforms(64, x, g))
    assert (mask.sum((1, 2, 3)) <= 4 * 4 + 4).all() and (mask.sum((1, 2, 3)) >= 9).all()
    assert ((x_adv != x) <= (mask > 0)).all()
    pasted = [frozenset(map(tuple, x_adv[i].permute(1, 2, 0)[mask[i, 0] > 0].tolist())) for i in range(64)]
    assert len(set(pasted)) > 10, "the sub-pixel location changes which of the stored pixels a paste shows"
    with pytest.raises(ValueError, match="canvas 0.5 does not apply to a full_resolution patch"):
        AdversarialPatch(full_resolution=True, canvas=0.5)


def test_patch_result_has_one_row_per_area_and_reports_its_budget():
    model = detector()
    x = low_contrast_images(20)
    with torch.no_grad():
        y = model(x).argmax(1)
    target = 7
    assert not (y == target).any()
    result = AdversarialPatch(steps=2, batch_size=8, seed=0)(model, x, y, area=[0.05, 0.1], target=target)
    assert result.x_adv.shape == (2, *x.shape) and result.success.shape == (2, 20)
    assert result.grad_steps == 2 * 2 * 8 and result.queries == 2 * 20
    for k, (info, side) in enumerate(zip(result.info["per_eps"], (3, 5))):
        assert info["patch"].shape == (3, side, side) and side == patch_side(info["area"], 16, 16)
        assert info["area_share"] <= info["area"]  # the largest square within the budget; rotation keeps its area
        assert ((result.x_adv[k] != x) <= (info["mask"] > 0)).all()
        with torch.no_grad():
            assert torch.equal(result.success[k], model(result.x_adv[k]).argmax(1) == target)


@pytest.mark.parametrize("full_resolution", [False, True])
def test_patch_reaches_its_target_on_held_out_images_with_a_tiny_budget(full_resolution):
    model = detector()
    x = low_contrast_images(400)
    with torch.no_grad():
        y = model(x).argmax(1)
    target = 7  # a class the model never answers on clean images
    assert not (y == target).any()
    x_fit, x_test, y_test = x[:200], x[200:], y[200:]
    # a full-resolution patch: 16x16 pixels, each paste trains only the 4x4 it shows, so it takes more steps
    steps, lr = (40, 0.3) if full_resolution else (20, 0.1)
    learned = AdversarialPatch(steps=steps, batch_size=32, lr=lr, full_resolution=full_resolution, seed=0)(
        model, x_test, y_test, area=0.07, target=target, x_fit=x_fit)
    noise = AdversarialPatch(steps=1, lr=1e-12, seed=0)(model, x_test, y_test, area=0.07, target=target, x_fit=x_fit)
    assert noise.success.float().mean() < 0.2  # chance, or less
    assert learned.info["patch"].shape == ((3, 16, 16) if full_resolution else (3, 4, 4))
    assert ((learned.x_adv != x_test) <= (learned.info["mask"] > 0)).all()
    assert learned.info["area_share"] <= 0.07
    assert learned.success.float().mean() > 0.5, "a 4x4 patch (6% of the image) should steer most held-out images"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"area": 0.0}, ValueError, "patch area must be a share of the image in"),
    ({"area": 0.001}, ValueError, "smaller than one pixel"),
    ({"area": 1.5}, ValueError, r"area must be in \[0, 1\]"),
    ({"target": 3}, ValueError, "already belong to the target class 3"),
    ({"target": 12}, ValueError, r"target must be in \[0, 9\]"),
    ({"target": "cat"}, TypeError, "one class index"),
    ({"x_fit": torch.rand(4, 3, 8, 8)}, ValueError, "x_fit images have shape"),
])
def test_patch_refuses_bad_calls(kwargs, error, match):
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    call = {"area": 0.05, "target": 7, **kwargs}
    with pytest.raises(error, match=match):
        AdversarialPatch(steps=1)(detector(), x, y, **call)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be an integer >= 1"), ({"rotation": 200}, r"rotation must be in \[0, 180\]"),
    ({"min_scale": 1.5}, "min_scale must be in"), ({"blur": -1}, "blur must be"), ({"loss": "l2"}, "loss must be one of"),
    ({"canvas": 1.5}, r"canvas must be a probability in \[0, 1\]"),
])
def test_patch_refuses_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdversarialPatch(**kwargs)


# ----------------------------------------------------------------------------- reprogramming


def test_reprogramming_leaves_the_victims_weights_and_statistics_unchanged():
    torch.manual_seed(0)
    victim = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                           nn.Flatten(), nn.Linear(16, 10))
    victim.train()  # left in training mode by its owner: batch-norm would update its statistics if run so
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    x, y = torch.rand(30, 1, 6, 6), torch.randint(0, 4, (30,))
    result = AdversarialReprogramming(epochs=2, batch_size=10, seed=0)(victim, x, y, host_shape=(3, 12, 12))
    after = victim.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in victim.parameters())
    assert victim.training and victim[1].training
    assert result.grad_steps == 2 * 30 and not torch.equal(result.program.weight, torch.zeros(3, 12, 12))


def test_program_embeds_the_source_at_the_centre_and_adds_only_on_the_frame():
    program = AdversarialProgram((3, 12, 12), 6, list(range(4)), "frame")
    with torch.no_grad():
        program.weight.normal_()
    x = torch.rand(2, 1, 6, 6)
    host = program(x)
    assert host.shape == (2, 3, 12, 12) and host.min() >= 0 and host.max() <= 1
    assert torch.equal(host[:, :, 3:9, 3:9], x.expand(-1, 3, -1, -1))
    assert torch.allclose(host[:, :, :3], torch.sigmoid(program.weight[:, :3]).expand(2, -1, -1, -1))
    assert program.program_size == 144 - 36


def test_full_and_affine_programs_cover_the_whole_image_and_stay_in_bounds():
    x = torch.zeros(2, 1, 6, 6)
    x[:, :, 1:5, 2] = 1.0  # a bar of ink on blank paper
    for form in ("full", "affine"):
        program = AdversarialProgram((3, 8, 8), 6, list(range(4)), form=form)
        with torch.no_grad():
            for p in program.parameters():
                p.normal_(0, 3)
        host = program(x)
        assert host.shape == (2, 3, 8, 8) and host.min() >= 0 and host.max() <= 1
        assert program.program_size == 64
        embedded = program.embed(x)
        if form == "full":
            assert torch.equal(host, (embedded + torch.tanh(program.weight)).clamp(0, 1))
        else:  # paper colour sigmoid(W) where there is no ink, ink colour sigmoid(A) where there is
            paper, ink = (embedded == 0), (embedded == 1)
            assert torch.equal(host[paper], torch.sigmoid(program.weight).expand_as(host)[paper])
            assert torch.allclose(host[ink], torch.sigmoid(program.ink).expand_as(host)[ink])
    assert set(dict(AdversarialProgram((3, 8, 8), 6, [0, 1], form="affine").named_parameters())) == {"weight", "ink"}


@pytest.mark.parametrize("form", ["frame", "full", "affine"])
def test_program_learns_a_new_task_on_a_tiny_victim(form):
    victim = trained_mlp()  # 14x14 MNIST digits
    x, y = mnist_14()
    small = F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False, antialias=True)
    x_train, y_train, x_test, y_test = small[:1000], y[:1000], small[4000:4500], y[4000:4500]
    result = AdversarialReprogramming(epochs=3, batch_size=50, lr=0.1, source_size=10, form=form, seed=0)(
        victim, x_train, y_train, (1, 14, 14))
    grey = AdversarialProgram((1, 14, 14), 10, list(range(10)), form=form)
    learned, untouched = reprogrammed_accuracy(victim, result.program, x_test, y_test), reprogrammed_accuracy(
        victim, grey, x_test, y_test)
    # W = 0: a 10x10 digit in a grey frame or an all-grey image (affine): near chance for the 14x14 victim; the bare
    # shrunk digit on black (full): better, but far from its 14x14 accuracy
    assert untouched < (0.45 if form == "full" else 0.25)
    assert learned > 0.35 and learned > untouched + 0.15


def test_jitter_moves_and_zooms_each_source_image_within_its_bounds():
    x = torch.zeros(200, 1, 28, 28)
    x[:, :, 12:16, 12:16] = 1  # a 4x4 blob at the centre
    assert jitter_sources(x, 0, 0, None) is x
    g = torch.Generator().manual_seed(0)
    moved = jitter_sources(x, 3, 0, g)
    mass = moved[:, 0].sum((1, 2))
    grid = torch.arange(28.0)
    centre = torch.stack([(moved[:, 0].sum(2) * grid).sum(1), (moved[:, 0].sum(1) * grid).sum(1)], 1) / mass[:, None]
    offset = centre - 13.5
    assert torch.allclose(mass, torch.full_like(mass, 16.0), atol=1e-4), "a move keeps the blob's ink"
    assert offset.abs().max() <= 3 + 1e-4 and offset.abs().max() > 2.5 and offset.std(0).min() > 1
    zoomed = jitter_sources(x, 0, 0.5, g)[:, 0].sum((1, 2)) / 16
    assert zoomed.min() >= 0.25 - 1e-3 and zoomed.max() <= 2.25 + 1e-3 and zoomed.max() - zoomed.min() > 1.0


def test_test_time_moves_average_the_victim_over_one_pixel_translations():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 2] = x[0, 0, 3, 5] = 1
    right, up = moved(x, 1, 0)[0, 0], moved(x, 0, -1)[0, 0]
    assert torch.nonzero(right).tolist() == [[0, 3]], "the pixel on the right border leaves the frame"
    assert torch.nonzero(up).tolist() == [[2, 5]], "the pixel on the top border leaves the frame"
    victim = detector(channels=1)
    program = AdversarialProgram((1, 16, 16), 12, list(range(10)), "affine")
    with torch.no_grad():
        program.weight.normal_()
        program.ink.normal_()
    digits = torch.rand(5, 1, 12, 12)
    alone = Reprogrammed(victim, program)(digits).log_softmax(1)
    assert torch.allclose(reprogrammed_log_probs(victim, program, digits), alone)
    by_hand = torch.stack([Reprogrammed(victim, program)(moved(digits, dx, dy)).log_softmax(1) for dx, dy in MOVES])
    averaged = reprogrammed_log_probs(victim, program, digits, moves=True)
    assert torch.allclose(averaged, by_hand.mean(0)) and not torch.allclose(averaged, alone)
    y = averaged.argmax(1)
    assert reprogrammed_accuracy(victim, program, digits, y, moves=True) == 1.0


def test_crop_embeds_the_sources_centre_only():
    x = torch.zeros(2, 1, 28, 28)
    x[0, :, :4] = 1  # ink in the top margin only
    x[1, :, 4:24, 4:24] = 1  # the 20x20 box a digit sits in
    program = AdversarialProgram((3, 32, 32), 32, [0, 1], "full", crop=4)
    embedded = program.embed(x)
    assert embedded.shape == (2, 3, 32, 32)
    assert embedded[0].max() == 0 and embedded[1].min() == 1, "crop 4 keeps the 20x20 centre, resized over the host"
    assert AdversarialProgram((3, 32, 32), 32, [0, 1], "full").embed(x)[1, :, 0].max() == 0  # uncropped: a margin


@pytest.mark.parametrize("call, match", [
    (lambda a: AdversarialReprogramming(crop=-1), "crop must be an integer >= 0"),
    (lambda a: AdversarialProgram((1, 8, 8), 4, [0, 1], "full", crop=2)(torch.rand(1, 1, 4, 4)), "crop 2 leaves nothing"),
    (lambda a: AdversarialReprogramming(shift=-1), "shift must be >= 0"),
    (lambda a: AdversarialReprogramming(scale=1.0), r"scale must be in \[0, 1\)"),
    (lambda a: AdversarialProgram((1, 8, 8), 10, [0, 1], "full"), r"source_size must be in \[1, 8\]"),
    (lambda a: AdversarialProgram((1, 8, 8), 4, [0, 0], "frame"), "distinct victim classes"),
    (lambda a: AdversarialProgram((1, 8, 8), 8, [0, 1], "frame"), "a frame program has no pixels left"),
    (lambda a: AdversarialProgram((1, 8, 8), 4, [0, 1], form="patch"), "form must be one of frame, full, affine"),
    (lambda a: AdversarialReprogramming(form="tile"), "form must be one of frame, full, affine"),
    (lambda a: AdversarialReprogramming(epochs=0), "epochs must be an integer >= 1"),
    (lambda a: AdversarialReprogramming(label_map=[0, 1])(detector(), torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2]),
                                                         (3, 8, 8)), "label_map maps 2 source classes"),
])
def test_reprogramming_refuses_bad_options(call, match):
    with pytest.raises(ValueError, match=match):
        call(None)
