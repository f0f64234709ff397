"""nst_fast.losses against direct float64 evaluations of the seeds' formulas."""

from __future__ import annotations

import pytest
import torch

from nst_fast import losses
from nst_fast.objective import StyleTransferLoss

SHAPES = [(1, 3, 5, 7), (2, 8, 6, 6), (3, 16, 9, 4), (2, 64, 11, 13)]


def rand(*shape, dtype=torch.float64):
    # ReLU-like activations: non-negative, never all zero.
    return torch.rand(*shape, dtype=dtype) * 3 + 0.01


def gram_f64(a: torch.Tensor) -> torch.Tensor:
    """G_ij = Σ_k F_ik·F_jk, written as the sum it is."""
    b, c, h, w = a.shape
    f = a.double().reshape(b, c, h * w)
    return (f[:, :, None, :] * f[:, None, :, :]).sum(-1)


def content_f64(a_C, a_G):
    _, c, h, w = a_G.shape
    return ((a_C.double() - a_G.double()) ** 2).sum() / (4 * h * w * c)


def style_layer_f64(a_S, a_G):
    _, c, h, w = a_G.shape
    return ((gram_f64(a_S) - gram_f64(a_G)) ** 2).sum() / (4 * c**2 * (h * w) ** 2)


def close(x, y, rtol=1e-6):
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    assert torch.allclose(x, y, rtol=rtol, atol=0), f"{x} != {y} (rel err {((x - y).abs() / y.abs()).max():.3g})"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_gram_matches_float64_sum(shape, impl):
    a = rand(*shape)
    g = losses.gram_matrix(a, impl=impl)
    assert g.shape == (shape[0], shape[1], shape[1]) and g.dtype == torch.float64
    close(g, gram_f64(a))


@pytest.mark.parametrize("shape", SHAPES)
def test_content_loss_matches_formula(shape):
    a_C, a_G = rand(*shape), rand(*shape)
    close(losses.content_loss(a_C, a_G), content_f64(a_C, a_G))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_style_layer_loss_matches_formula(shape, impl):
    a_S, a_G = rand(*shape), rand(*shape)
    close(losses.style_layer_loss(a_S, a_G, impl=impl), style_layer_f64(a_S, a_G))


def test_losses_sum_over_batch_elements():
    a_C, a_G = rand(3, 4, 5, 6), rand(3, 4, 5, 6)
    per_element = sum(content_f64(a_C[i : i + 1], a_G[i : i + 1]) for i in range(3))
    close(losses.content_loss(a_C, a_G), per_element)
    per_element = sum(style_layer_f64(a_C[i : i + 1], a_G[i : i + 1]) for i in range(3))
    close(losses.style_layer_loss(a_C, a_G), per_element)


def test_one_style_is_compared_with_every_generated_image():
    a_S, a_G = rand(1, 6, 4, 5), rand(3, 6, 4, 5)
    expected = sum(style_layer_f64(a_S, a_G[i : i + 1]) for i in range(3))
    close(losses.style_layer_loss(a_S, a_G), expected)


def test_style_of_another_size_normalizes_each_gram_by_its_own_positions():
    a_S, a_G = rand(1, 8, 10, 12), rand(1, 8, 5, 7)
    c = 8
    n_S, n_G = gram_f64(a_S) / (10 * 12), gram_f64(a_G) / (5 * 7)
    close(losses.style_layer_loss(a_S, a_G), ((n_S - n_G) ** 2).sum() / (4 * c * c))


def test_style_loss_weights_layers():
    acts_S = {"a": rand(1, 4, 6, 6), "b": rand(1, 8, 3, 3)}
    acts_G = {"a": rand(1, 4, 6, 6), "b": rand(1, 8, 3, 3)}
    targets = {k: losses.style_target(v) for k, v in acts_S.items()}
    lam = {"a": 0.3, "b": 2.5}
    expected = sum(lam[k] * style_layer_f64(acts_S[k], acts_G[k]) for k in lam)
    close(losses.style_loss(targets, acts_G, lam), expected)


def test_tv_loss_matches_definition():
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    dy = ((x[:, :, 1:] - x[:, :, :-1]) ** 2).mean(dim=(1, 2, 3))
    dx = ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).mean(dim=(1, 2, 3))
    close(losses.tv_loss(x), (dy + dx).sum())
    assert losses.tv_loss(torch.ones(1, 3, 4, 4)) == 0


def test_tv_loss_of_one_pixel_wide_images_is_finite():
    assert losses.tv_loss(torch.rand(1, 3, 1, 5)) > 0
    assert losses.tv_loss(torch.rand(1, 3, 1, 1)) == 0


def test_content_batches_must_fit():
    with pytest.raises(ValueError, match="do not fit"):
        losses.content_loss(rand(3, 4, 5, 5), rand(1, 4, 5, 5))
    close(
        losses.content_loss(rand(1, 4, 5, 5) * 0 + 1, torch.ones(2, 4, 5, 5, dtype=torch.float64) * 2),
        2 * content_f64(torch.ones(1, 4, 5, 5), 2 * torch.ones(1, 4, 5, 5)),
    )


def test_total_loss_combines_weighted_terms():
    a_C, a_S, a_G = rand(1, 4, 6, 6), rand(1, 4, 6, 6), rand(1, 4, 6, 6)
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    loss = StyleTransferLoss({"x": a_C}, {"x": losses.style_target(a_S)}, {"x": 1.0}, 2.0, 30.0, 0.5)
    total, terms = loss({"x": a_G}, image)
    close(terms["content"], 2.0 * content_f64(a_C, a_G))
    close(terms["style"], 30.0 * style_layer_f64(a_S, a_G))
    close(terms["tv"], 0.5 * losses.tv_loss(image))
    close(total, terms["content"] + terms["style"] + terms["tv"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_activations_accumulate_in_float32(dtype):
    a_S, a_G = rand(2, 32, 17, 19, dtype=torch.float32), rand(2, 32, 17, 19, dtype=torch.float32)
    low_S, low_G = a_S.to(dtype), a_G.to(dtype)
    g = losses.gram_matrix(low_G)
    assert g.dtype == torch.float32
    # Exact sums of the rounded inputs: only accumulation error may remain.
    close(g, gram_f64(low_G), rtol=1e-5)
    assert losses.style_layer_loss(low_S, low_G).dtype == torch.float32
    close(losses.style_layer_loss(low_S, low_G), style_layer_f64(low_S, low_G), rtol=1e-3)
    close(losses.content_loss(low_S, low_G), content_f64(low_S, low_G), rtol=1e-5)


def test_autocast_does_not_lower_the_precision_of_the_losses():
    a_S, a_G = rand(1, 16, 9, 9, dtype=torch.float32), rand(1, 16, 9, 9, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = losses.gram_matrix(a_G)
        j = losses.style_layer_loss(a_S, a_G)
    assert g.dtype == torch.float32
    close(g, gram_f64(a_G), rtol=1e-5)
    close(j, style_layer_f64(a_S, a_G), rtol=1e-4)


@pytest.mark.parametrize("impl", ["ref", "auto"])
def test_gradcheck_float64(impl):
    a_S = rand(2, 3, 4, 5)
    a_C = rand(2, 3, 4, 5)
    a_G = rand(2, 3, 4, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda g: losses.style_layer_loss(a_S, g, impl=impl), (a_G,))
    assert torch.autograd.gradcheck(lambda g: losses.content_loss(a_C, g), (a_G,))
    assert torch.autograd.gradcheck(losses.tv_loss, (torch.rand(1, 3, 5, 6, dtype=torch.float64, requires_grad=True),))
