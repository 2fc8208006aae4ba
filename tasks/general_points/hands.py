"""Seeded sampling of solvable GeneralPoints hands.

Ranks are drawn i.i.d. uniform from 1..13 (rule-OOD: num_cards-1 uniform ranks and one J/Q/K at a uniform
position, as the reference) and a hand is redrawn until its values under the active face-card rule reach the
target (and, with `hand_pool`, until it lies in the chosen pool). Suits are uniform over the config's suit set. Draws happen in fixed-size chunks of candidate hands, so
`sample_hands(config, seed, n)` is a pure function of (config, seed, n) and a prefix of the same call with a
larger n. Solvability is cached per sorted value multiset (`_solvable_table`), so after warm-up a chunk costs a
few numpy operations.

Arrays: ranks (N, C) int64 with N candidate hands and C = num_cards.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tasks.general_points.config import SUITS, Card, GeneralPointsConfig, card_value
from tasks.general_points.solver import is_solvable

CHUNK = 1024
# A target no hand reaches would loop forever: give up after this many candidate hands.
MAX_CANDIDATES = 2_000_000
# Every Card object, built once: hands share them (Card is immutable). Index: (rank - 1) * 4 + suit index.
_DECK = tuple(Card(rank, suit) for rank in range(1, 14) for suit in SUITS)


class _SolvableTable:
    """Solvability per sorted rank multiset for one (face rule, target), filled lazily. A multiset is coded as
    the base-14 number of its sorted ranks, which indexes a boolean array (known, solvable)."""

    def __init__(self, face_cards: str, target: int, num_cards: int) -> None:
        self.face_cards, self.target = face_cards, target
        self.weights = 14 ** np.arange(num_cards - 1, -1, -1, dtype=np.int64)
        self.known = np.zeros(14**num_cards, dtype=bool)
        self.solvable = np.zeros(14**num_cards, dtype=bool)

    def lookup(self, ranks: np.ndarray) -> np.ndarray:
        ordered = np.sort(ranks, axis=1)
        codes = ordered @ self.weights
        unknown = ~self.known[codes]
        if unknown.any():
            new_codes, first = np.unique(codes[unknown], return_index=True)
            for code, row in zip(new_codes.tolist(), ordered[unknown][first].tolist()):
                values = [card_value(rank, self.face_cards) for rank in row]
                self.solvable[code] = is_solvable(values, self.target)
            self.known[new_codes] = True
        return self.solvable[codes]


@lru_cache(maxsize=16)  # 14**C entries each: 38 KB for 4 cards, 7.5 MB for 6
def _solvable_table(face_cards: str, target: int, num_cards: int) -> _SolvableTable:
    return _SolvableTable(face_cards, target, num_cards)


# Knuth's multiplicative hash of a multiset's base-14 code, as a fraction of 2**32: a fixed, well-spread split.
_HASH_MULTIPLIER = np.uint64(2654435761)


def in_heldout_pool(ranks: np.ndarray, heldout_share: float) -> np.ndarray:
    """Whether each hand (row of ranks (N, C), any order) belongs to the held-out pool: a fixed function of its
    sorted rank multiset, so the pools never share a hand whatever the rule, target, suits or card order."""
    ranks = np.asarray(ranks, dtype=np.int64)
    codes = (np.sort(ranks, axis=1) @ (14 ** np.arange(ranks.shape[1] - 1, -1, -1, dtype=np.int64))).astype(np.uint64)
    hashed = (codes * _HASH_MULTIPLIER) % np.uint64(2**32)
    return hashed.astype(np.float64) / 2.0**32 < heldout_share


def _candidate_ranks(rng: np.random.Generator, config: GeneralPointsConfig) -> np.ndarray:
    ranks = rng.integers(1, 14, size=(CHUNK, config.num_cards))
    if config.require_face_card:
        face = rng.integers(11, 14, size=CHUNK)
        position = rng.integers(0, config.num_cards, size=CHUNK)
        ranks[np.arange(CHUNK), position] = face
    return ranks


def sample_hand_arrays(config: GeneralPointsConfig, rng: np.random.Generator, size: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`size` solvable hands as arrays: ranks (size, C) in 1..13 and suit indices (size, C) into SUITS."""
    if size < 0:
        raise ValueError(f"the number of hands must be non-negative, got {size}.")
    table = _solvable_table(config.face_cards, config.target, config.num_cards)
    suit_indices = np.array([SUITS.index(s) for s in config.suit_choices])
    kept_ranks, kept_suits, count, drawn = [], [], 0, 0
    while count < size:
        if drawn >= MAX_CANDIDATES:
            raise ValueError(
                f"no solvable hand found in {drawn} draws for target {config.target} with {config.num_cards} "
                f"cards under the '{config.face_cards}' rule; choose a reachable target.")
        ranks = _candidate_ranks(rng, config)
        suits = suit_indices[rng.integers(0, len(suit_indices), size=ranks.shape)]
        drawn += CHUNK
        ok = table.lookup(ranks)
        if config.hand_pool != "all":
            ok &= in_heldout_pool(ranks, config.heldout_share) == (config.hand_pool == "heldout")
        kept_ranks.append(ranks[ok])
        kept_suits.append(suits[ok])
        count += int(ok.sum())
    if not kept_ranks:
        empty = np.zeros((0, config.num_cards), dtype=np.int64)
        return empty, empty.copy()
    return np.concatenate(kept_ranks)[:size], np.concatenate(kept_suits)[:size]


def sample_hands(config: GeneralPointsConfig, seed: int | np.random.Generator, size: int
                 ) -> list[tuple[Card, ...]]:
    """`size` solvable hands (tuples of `Card`) for the config: a pure function of (config, seed, size) when
    `seed` is an int; a Generator is advanced."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ranks, suits = sample_hand_arrays(config, rng, size)
    deck_index = ((ranks - 1) * 4 + suits).tolist()
    deck = _DECK
    return [tuple([deck[i] for i in row]) for row in deck_index]


def sample_hand(config: GeneralPointsConfig, seed: int | np.random.Generator) -> tuple[Card, ...]:
    """One solvable hand (see `sample_hands`)."""
    return sample_hands(config, seed, 1)[0]


def hand_values(hand, config: GeneralPointsConfig) -> list[int]:
    """The numbers a hand stands for under the config's face-card rule, in hand order."""
    return [card_value(card.rank, config.face_cards) for card in hand]
