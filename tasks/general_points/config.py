"""The GeneralPoints (24-points) configuration and cards: which rule, target, hand size, suits and modality an
instance uses, and the labels and values of cards under the face-card rule.

A split of the paper is a config: in-distribution is `face_cards="ten"`, rule-OOD is `face_cards="distinct",
require_face_card=True`, visual-OOD is `suits="red"` (see `evaluation_splits`). Face-card rule and target are
independent fields so that a mixture of rules and targets is a list of configs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SUITS = ("S", "H", "D", "C")
BLACK_SUITS = ("S", "C")
RED_SUITS = ("H", "D")
SUIT_CHOICES = {"black": BLACK_SUITS, "red": RED_SUITS, "mixed": SUITS}
FACE_RULES = ("ten", "distinct")
MODALITIES = ("language", "vision")
HAND_POOLS = ("all", "train", "heldout")

RANK_LABELS = {1: "A", 11: "J", 12: "Q", 13: "K"}
LABEL_RANKS = {"A": 1, "J": 11, "Q": 12, "K": 13, **{str(rank): rank for rank in range(2, 11)}}
# Indexed by rank (index 0 unused): the label, and the value under each face-card rule.
RANK_LABEL_TABLE = ("",) + tuple(RANK_LABELS.get(rank, str(rank)) for rank in range(1, 14))
RANK_VALUES = {"ten": tuple(min(rank, 10) for rank in range(14)), "distinct": tuple(range(14))}
# Ranks as small non-negative integers 1..13; the largest hand the solver and sampler support.
MAX_CARDS = 6


@dataclass(frozen=True, slots=True)
class Card:
    """A playing card: rank 1..13 (A = 1, J = 11, Q = 12, K = 13) and suit "S", "H", "D" or "C"."""

    rank: int
    suit: str

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= 13:
            raise ValueError(f"Card rank must be an integer 1..13, got {self.rank!r}.")
        if self.suit not in SUITS:
            raise ValueError(f"Card suit must be one of {SUITS}, got {self.suit!r}.")

    @property
    def label(self) -> str:
        """The label a player reads: 'A', '2'..'10', 'J', 'Q', 'K'."""
        return RANK_LABEL_TABLE[self.rank]

    @property
    def is_red(self) -> bool:
        return self.suit in RED_SUITS


def rank_label(rank: int) -> str:
    return RANK_LABEL_TABLE[rank]


def card_value(rank: int, face_cards: str) -> int:
    """The number a rank stands for: J/Q/K count 10 under "ten" and 11/12/13 under "distinct"; A is 1."""
    return RANK_VALUES[face_cards][rank]


@dataclass(frozen=True)
class GeneralPointsConfig:
    """One GeneralPoints setting.

    target:            the value the formula must reach.
    num_cards:         cards per hand (1..6; the paper uses 4).
    face_cards:        "ten" (J, Q, K count 10; in-distribution) or "distinct" (J=11, Q=12, K=13; rule-OOD).
    require_face_card: hands hold at least one J/Q/K (the rule-OOD evaluation sampler: num_cards-1 uniform ranks
                       plus one rank from J..K at a uniform position).
    suits:             "black" (spades, clubs; training), "red" (hearts, diamonds; visual-OOD) or "mixed".
    modality:          "language" (card labels in the prompt; GP-L) or "vision" (an image of the cards; GP-VL).
    max_verify_steps:  verification budget of a multi-turn episode.
    image_width, image_height: the rendered table in pixels (default: two 560-pixel tiles side by side).
    prompt_template, feedback_template: paths of text files overriding the packaged templates (None: packaged),
                       or "packaged:NAME" for another packaged template (e.g. "packaged:compact.txt"; no path, so
                       configs and run directories that use it do not depend on where the checkout is).
    hand_pool:         "all" hands, or only the "train" / "heldout" pool: a fixed split of the rank multisets
                       (suits and order ignored, so one physical hand is in one pool under every rule and colour)
                       that keeps evaluation hands out of every training set (see `in_heldout_pool`).
    heldout_share:     the share of rank multisets in the held-out pool (about; a fixed hash decides).
    """

    target: int = 24
    num_cards: int = 4
    face_cards: str = "ten"
    require_face_card: bool = False
    suits: str = "black"
    modality: str = "language"
    max_verify_steps: int = 5
    image_width: int = 1120
    image_height: int = 560
    prompt_template: str | None = None
    feedback_template: str | None = None
    hand_pool: str = "all"
    heldout_share: float = 0.25

    def __post_init__(self) -> None:
        problem = _config_problem(self)
        if problem:
            raise ValueError(f"GeneralPointsConfig: {problem}.")

    @property
    def suit_choices(self) -> tuple[str, ...]:
        return SUIT_CHOICES[self.suits]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_problem(config: GeneralPointsConfig) -> str | None:
    """The first thing wrong with a config, as a sentence fragment naming the field and what to do, or None."""
    if not _is_int(config.target) or not -10_000 <= config.target <= 10_000:
        return f"target must be an integer in -10000..10000, got {config.target!r}"
    if not _is_int(config.num_cards) or not 1 <= config.num_cards <= MAX_CARDS:
        return f"num_cards must be an integer 1..{MAX_CARDS}, got {config.num_cards!r}"
    if config.face_cards not in FACE_RULES:
        return f"face_cards must be one of {FACE_RULES}, got {config.face_cards!r}"
    if not isinstance(config.require_face_card, bool):
        return f"require_face_card must be True or False, got {config.require_face_card!r}"
    if config.suits not in SUIT_CHOICES:
        return f"suits must be one of {tuple(SUIT_CHOICES)}, got {config.suits!r}"
    if config.modality not in MODALITIES:
        return f"modality must be one of {MODALITIES}, got {config.modality!r}"
    if not _is_int(config.max_verify_steps) or config.max_verify_steps < 1:
        return f"max_verify_steps must be a positive integer, got {config.max_verify_steps!r}"
    for name in ("image_width", "image_height"):
        value = getattr(config, name)
        if not _is_int(value) or not 64 <= value <= 8192:
            return f"{name} must be an integer 64..8192 pixels, got {value!r}"
    if config.hand_pool not in HAND_POOLS:
        return f"hand_pool must be one of {HAND_POOLS}, got {config.hand_pool!r}"
    if not isinstance(config.heldout_share, (int, float)) or not 0.0 < config.heldout_share < 1.0:
        return f"heldout_share must be a number strictly between 0 and 1, got {config.heldout_share!r}"
    for name in ("prompt_template", "feedback_template"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a file path (str) or None, got {value!r}"
    return None


def evaluation_splits(config: GeneralPointsConfig) -> dict[str, GeneralPointsConfig]:
    """The paper's three evaluation settings derived from a training config: in-distribution (as given),
    rule-OOD (J/Q/K = 11/12/13, each hand holds a face card) and, for the vision modality, visual-OOD (red
    suits)."""
    splits = {
        "in_distribution": config,
        "rule_ood": replace(config, face_cards="distinct", require_face_card=True),
    }
    if config.modality == "vision":
        splits["visual_ood"] = replace(config, suits="red")
    return splits


