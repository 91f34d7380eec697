"""The loss modules against hand computations: Gram, content, style (blended), TV, and their sum."""

import pytest
import torch
import torch.nn.functional as F

from nst_batch.engine.losses import ContentLoss, Moments, StyleLoss, StyleTransferLoss, TVLoss, gram

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gram_matches_a_hand_computation_normalized_by_c_h_w():
    features = torch.arange(24.0).reshape(2, 3, 2, 2)  # batch 0: channels [0..3], [4..7], [8..11]
    by_hand = torch.tensor(
        [
            [[14.0, 38.0, 62.0], [38.0, 126.0, 214.0], [62.0, 214.0, 366.0]],
            [[734.0, 950.0, 1166.0], [950.0, 1230.0, 1510.0], [1166.0, 1510.0, 1854.0]],
        ]
    ) / (3 * 2 * 2)
    torch.testing.assert_close(gram(features), by_hand)


def test_gram_does_not_depend_on_the_size_of_the_feature_map():
    features = torch.randn((1, 8, 5, 7), generator=torch.Generator().manual_seed(0))
    upsampled = F.interpolate(features, scale_factor=2, mode="nearest")  # every value four times
    torch.testing.assert_close(gram(upsampled), gram(features))


def test_content_loss_is_the_mean_squared_error():
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    features = torch.tensor([[[[1.0, 0.0], [6.0, 8.0]]]])
    by_hand = (0**2 + 2**2 + 3**2 + 4**2) / 4
    assert ContentLoss(target)(features).item() == pytest.approx(by_hand)


def test_content_loss_is_zero_for_its_own_target():
    target = torch.randn(1, 4, 3, 3)
    assert ContentLoss(target)(target.clone()).item() == 0.0


def test_style_loss_is_the_mean_squared_error_of_gram_matrices():
    generator = torch.Generator().manual_seed(1)
    style, features = torch.randn((1, 3, 4, 4), generator=generator), torch.randn((1, 3, 4, 4), generator=generator)
    expected = ((gram(features) - gram(style)) ** 2).sum() / 9  # averaged over the 3 x 3 entries
    assert StyleLoss(gram(style))(features).item() == pytest.approx(expected.item())


def test_style_loss_blended_target_is_the_weighted_sum_of_grams():
    generator = torch.Generator().manual_seed(2)
    first, second = torch.randn((1, 4, 3, 3), generator=generator), torch.randn((1, 4, 5, 5), generator=generator)
    blended = StyleLoss.blended([Moments.of(first), Moments.of(second)], [0.25, 0.75])
    torch.testing.assert_close(blended.target, 0.25 * gram(first) + 0.75 * gram(second))


def test_style_loss_blended_with_one_zero_weight_is_exactly_the_other_style():
    generator = torch.Generator().manual_seed(3)
    first, second = torch.randn((1, 4, 3, 3), generator=generator), torch.randn((1, 4, 3, 3), generator=generator)
    assert torch.equal(StyleLoss.blended([Moments.of(first), Moments.of(second)], [1.0, 0.0]).target, gram(first))


def test_tv_loss_matches_a_hand_computation():
    image = torch.tensor([[[[1.0, 2.0, 4.0], [0.0, 3.0, 3.0]]]])  # 1x1x2x3
    horizontal = (1**2 + 2**2 + 3**2 + 0**2) / 4  # 2-1, 4-2 / 3-0, 3-3
    vertical = ((-1) ** 2 + 1**2 + (-1) ** 2) / 3  # 0-1, 3-2, 3-4
    assert TVLoss()(image).item() == pytest.approx(horizontal + vertical)


def test_tv_loss_is_zero_for_a_flat_image():
    assert TVLoss()(torch.full((1, 3, 4, 5), 0.3)).item() == 0.0


def _loss_and_inputs(tv_weight: float):
    generator = torch.Generator().manual_seed(4)
    target_a, target_b, style = (torch.randn((1, 2, 3, 3), generator=generator) for _ in range(3))
    features = {"a": torch.randn((1, 2, 3, 3), generator=generator), "b": torch.randn((1, 2, 3, 3), generator=generator)}
    image = torch.rand((1, 3, 6, 6), generator=generator)
    loss = StyleTransferLoss(
        content={"a": ContentLoss(target_a)},
        style={"a": StyleLoss(gram(style)), "b": StyleLoss(gram(target_b))},
        layer_weights={"a": 0.5, "b": 2.0},
        content_weight=3.0,
        style_weight=10.0,
        tv_weight=tv_weight,
    )
    return loss, image, features, (target_a, style, target_b)


def test_style_transfer_loss_weights_each_term_and_they_add_up_to_the_total():
    loss, image, features, (target_a, style, target_b) = _loss_and_inputs(tv_weight=7.0)
    total, terms = loss(image, features)

    torch.testing.assert_close(terms["content"], 3.0 * F.mse_loss(features["a"], target_a))
    style_by_hand = 0.5 * F.mse_loss(gram(features["a"]), gram(style)) + 2.0 * F.mse_loss(
        gram(features["b"]), gram(target_b)
    )
    torch.testing.assert_close(terms["style"], 10.0 * style_by_hand)
    torch.testing.assert_close(terms["tv"], 7.0 * TVLoss()(image))
    assert set(terms) == {"content", "style", "tv"}
    torch.testing.assert_close(total, terms["content"] + terms["style"] + terms["tv"])
    assert all(term.item() > 0 for term in terms.values())


def test_style_transfer_loss_tv_term_is_zero_when_its_weight_is_zero():
    loss, image, features, _ = _loss_and_inputs(tv_weight=0.0)
    total, terms = loss(image, features)
    assert TVLoss()(image).item() > 0  # the image is not smooth: only the weight makes the term vanish
    assert terms["tv"].item() == 0.0
    torch.testing.assert_close(total, terms["content"] + terms["style"])


def test_gram_gradient_is_exact():
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram, (features,))
