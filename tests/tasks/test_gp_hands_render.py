"""GeneralPoints hand sampling (seeded, solvable, rule-OOD face cards, suits) and the card renderer (size,
determinism, red and black ink)."""

import numpy as np
import pytest

from tasks.general_points import (Card, GeneralPointsConfig, evaluation_splits, hand_values, is_solvable,
                                  render_hand, sample_hand, sample_hands)
from tasks.general_points.render import BLACK_INK, RED_INK, TABLE_GREEN


def test_hands_are_a_pure_function_of_config_seed_size():
    config = GeneralPointsConfig()
    assert sample_hands(config, 7, 50) == sample_hands(config, 7, 50)
    assert sample_hands(config, 7, 20) == sample_hands(config, 7, 50)[:20]
    assert sample_hands(config, 7, 50) != sample_hands(config, 8, 50)
    assert sample_hands(config, 3, 0) == []
    rng = np.random.default_rng(7)
    assert sample_hand(config, rng) != sample_hand(config, rng)  # a Generator advances


@pytest.mark.parametrize("config", [
    GeneralPointsConfig(),
    GeneralPointsConfig(face_cards="distinct"),
    GeneralPointsConfig(target=10, num_cards=3),
    GeneralPointsConfig(target=36, num_cards=5, face_cards="distinct"),
])
def test_hands_are_solvable(config):
    hands = sample_hands(config, 0, 300)
    assert len(hands) == 300
    for hand in hands:
        assert len(hand) == config.num_cards
        assert is_solvable(hand_values(hand, config), config.target)


def test_ranks_are_uniform_and_unsolvable_hands_are_redrawn():
    hands = sample_hands(GeneralPointsConfig(face_cards="distinct"), 1, 4000)
    ranks = np.array([[card.rank for card in hand] for hand in hands])
    counts = np.bincount(ranks.ravel(), minlength=14)[1:]
    assert counts.min() > 0.5 * counts.mean()  # every rank appears; solvability skews, but not that much
    assert not any(sorted(r) == [1, 1, 1, 1] for r in ranks.tolist())


def test_rule_ood_hands_hold_a_face_card_and_suits_follow_the_config():
    split = evaluation_splits(GeneralPointsConfig(modality="vision"))
    assert set(split) == {"in_distribution", "rule_ood", "visual_ood"}
    for hand in sample_hands(split["rule_ood"], 2, 500):
        assert any(card.rank >= 11 for card in hand)
        assert {card.suit for card in hand} <= {"S", "C"}
    assert {c.suit for h in sample_hands(split["visual_ood"], 2, 200) for c in h} == {"H", "D"}
    mixed = GeneralPointsConfig(suits="mixed")
    assert {c.suit for h in sample_hands(mixed, 2, 200) for c in h} == {"S", "H", "D", "C"}
    # without the requirement some hands have no face card
    assert any(all(card.rank <= 10 for card in hand) for hand in sample_hands(GeneralPointsConfig(), 2, 100))


def test_unreachable_target_stops_with_a_clear_error():
    with pytest.raises(ValueError, match="no solvable hand"):
        sample_hands(GeneralPointsConfig(target=9999, num_cards=1), 0, 1)


@pytest.mark.parametrize("kwargs,field", [
    ({"target": "24"}, "target"), ({"num_cards": 0}, "num_cards"), ({"num_cards": 7}, "num_cards"),
    ({"face_cards": "eleven"}, "face_cards"), ({"suits": "blue"}, "suits"), ({"modality": "audio"}, "modality"),
    ({"max_verify_steps": 0}, "max_verify_steps"), ({"image_width": 10}, "image_width"),
    ({"require_face_card": 1}, "require_face_card"), ({"prompt_template": 3}, "prompt_template"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GeneralPointsConfig(**kwargs)


def test_card_validation():
    with pytest.raises(ValueError, match="rank"):
        Card(14, "S")
    with pytest.raises(ValueError, match="suit"):
        Card(3, "X")
    assert [Card(r, "S").label for r in (1, 2, 10, 11, 12, 13)] == ["A", "2", "10", "J", "Q", "K"]


def _ink_pixels(image, ink, tolerance=40):
    return int((np.abs(image.astype(int) - np.array(ink)).max(axis=-1) < tolerance).sum())


def test_render_size_determinism_and_ink():
    black = (Card(1, "S"), Card(7, "C"), Card(10, "S"), Card(13, "C"))
    red = (Card(1, "H"), Card(7, "D"), Card(10, "H"), Card(13, "D"))
    image = render_hand(black)
    assert image.shape == (560, 1120, 3) and image.dtype == np.uint8
    assert render_hand(black, 300, 200).shape == (200, 300, 3)
    assert np.array_equal(image, render_hand(black))
    assert np.array_equal(render_hand(black, seed=4), render_hand(black, seed=4))
    assert not np.array_equal(render_hand(black, seed=4), render_hand(black, seed=5))
    assert not np.array_equal(image, render_hand(black[::-1]))
    assert _ink_pixels(image, BLACK_INK) > 1000 and _ink_pixels(image, RED_INK) == 0
    red_image = render_hand(red)
    assert _ink_pixels(red_image, RED_INK) > 1000 and _ink_pixels(red_image, BLACK_INK) == 0
    assert _ink_pixels(image, TABLE_GREEN, tolerance=3) > 0.3 * 560 * 1120  # a green table around the cards
    assert (image.reshape(-1, 3).min(axis=-1) > 240).sum() > 0.2 * 560 * 1120  # white cards
    # every rank looks different
    singles = [render_hand((Card(rank, "S"),), 200, 200) for rank in range(1, 14)]
    assert len({s.tobytes() for s in singles}) == 13
    with pytest.raises(ValueError):
        render_hand(())


@pytest.mark.parametrize("size", [(64, 64), (128, 64), (112, 112)])
def test_the_smallest_accepted_sizes_render(size):
    """The config accepts 64..8192 pixels; tiny CPU models use 64-112 pixel images."""
    hand = (Card(1, "S"), Card(12, "H"), Card(10, "D"), Card(5, "C"))
    width, height = size
    image = render_hand(hand, width, height)
    assert image.shape == (height, width, 3)
    assert np.array_equal(image, render_hand(hand, width, height))


@pytest.mark.parametrize("num_cards", [2, 3, 4])
def test_hand_pools_split_rank_multisets_under_every_rule_and_colour(num_cards):
    """The train and held-out pools never share a rank multiset, whatever the rule, target, suits or order; the
    held-out share is about as asked; "all" is the union."""
    from itertools import combinations_with_replacement
    from tasks.general_points import in_heldout_pool

    multisets = np.array(list(combinations_with_replacement(range(1, 14), num_cards)))
    heldout = in_heldout_pool(multisets, 0.25)
    assert abs(heldout.mean() - 0.25) < 0.1
    shuffled = np.random.default_rng(0).permuted(multisets, axis=1)
    assert (in_heldout_pool(shuffled, 0.25) == heldout).all()  # card order does not matter
    target = 24 if num_cards > 2 else 12
    pools = {}
    for pool in ("train", "heldout"):
        seen = set()
        for face_cards, suits in (("ten", "black"), ("distinct", "red")):
            config = GeneralPointsConfig(num_cards=num_cards, target=target, face_cards=face_cards, suits=suits,
                                         hand_pool=pool)
            for split in evaluation_splits(config).values():
                for hand in sample_hands(split, 1, 200):
                    seen.add(tuple(sorted(card.rank for card in hand)))
        pools[pool] = seen
    assert pools["train"] and pools["heldout"] and not pools["train"] & pools["heldout"]
    everything = {tuple(sorted(c.rank for c in h)) for h in sample_hands(
        GeneralPointsConfig(num_cards=num_cards, target=target), 1, 400)}
    assert everything & pools["train"] and everything & pools["heldout"]


def test_hand_pool_validation():
    with pytest.raises(ValueError, match="hand_pool"):
        GeneralPointsConfig(hand_pool="test")
    with pytest.raises(ValueError, match="heldout_share"):
        GeneralPointsConfig(heldout_share=1.0)
