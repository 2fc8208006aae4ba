"""`VirlConfig`: every knob of the V-IRL task (action space, modality, verification budget, oracle rail, views,
rewards, prompt template), validated once with one clear sentence per bad field."""

from __future__ import annotations

from dataclasses import dataclass

ACTION_SPACES = ("absolute", "relative")
MODALITIES = ("language", "vision")


@dataclass(frozen=True)
class VirlConfig:
    """action_space:       "absolute" (8 compass headings, in-distribution) or "relative" (left, right, slightly
                           left, slightly right; the rule-OOD variant).
    modality:              "language" (V-IRL-L, text observations) or "vision" (V-IRL-VL, a 2x2 view grid).
    max_verify_steps:      judged attempts per decision; one more response at the same decision is the
                           "past the budget" step (reward_budget, episode over), as in the reference.
    forward_points:        interpolated points between two intersections (reference 5).
    drop_probability:      chance that each interpolated point is dropped (reference 0.5).
    landmark_radius_m:     a landmark is observed (text) and its sign drawn (views) within this distance.
    view_size:             side in pixels of each of the four views; the grid is 2 * view_size + separator_px.
    separator_px:          width of the separators of the 2x2 grid (reference 5).
    city_style:            style name for synthetic cities (None: chosen by the city seed); see render.CITY_STYLES.
    seed:                  seed of the rail (which interpolated points are dropped).
    check_observation:     judge the "current observation" (landmarks and intersection) before the action.
    prompt_path:           a template file that replaces the built-in prompt (placeholders in prompts.py).
    mapping_radius_m:      real data: the nearest panorama must lie within this distance of a rail point.
    """

    action_space: str = "absolute"
    modality: str = "language"
    max_verify_steps: int = 2
    forward_points: int = 5
    drop_probability: float = 0.5
    landmark_radius_m: float = 20.0
    view_size: int = 192
    separator_px: int = 5
    city_style: str | None = None
    seed: int = 0
    check_observation: bool = True
    prompt_path: str | None = None
    mapping_radius_m: float = 20.0
    reward_correct: float = 1.0
    reward_wrong_observation: float = -1.5
    reward_wrong_action: float = -1.0
    reward_budget: float = -1.0

    def __post_init__(self) -> None:
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"VirlConfig.action_space must be one of {ACTION_SPACES}, got {self.action_space!r}.")
        if self.modality not in MODALITIES:
            raise ValueError(f"VirlConfig.modality must be one of {MODALITIES}, got {self.modality!r}.")
        if not isinstance(self.max_verify_steps, int) or self.max_verify_steps < 1:
            raise ValueError(f"VirlConfig.max_verify_steps must be an integer >= 1, got {self.max_verify_steps!r}.")
        if not isinstance(self.forward_points, int) or self.forward_points < 0:
            raise ValueError(f"VirlConfig.forward_points must be an integer >= 0, got {self.forward_points!r}.")
        if not 0.0 <= float(self.drop_probability) <= 1.0:
            raise ValueError(f"VirlConfig.drop_probability must lie in [0, 1], got {self.drop_probability!r}.")
        if not float(self.landmark_radius_m) > 0.0:
            raise ValueError(f"VirlConfig.landmark_radius_m must be > 0, got {self.landmark_radius_m!r}.")
        if not isinstance(self.view_size, int) or not 32 <= self.view_size <= 2048:
            raise ValueError(f"VirlConfig.view_size must be an integer in [32, 2048] pixels, got {self.view_size!r}.")
        if not isinstance(self.separator_px, int) or not 0 <= self.separator_px <= 64:
            raise ValueError(f"VirlConfig.separator_px must be an integer in [0, 64], got {self.separator_px!r}.")
        if not float(self.mapping_radius_m) > 0.0:
            raise ValueError(f"VirlConfig.mapping_radius_m must be > 0, got {self.mapping_radius_m!r}.")
        if self.city_style is not None:
            from tasks.virl.styles import CITY_STYLES  # local: styles is data, config should not need it loaded

            if self.city_style not in CITY_STYLES:
                raise ValueError(f"VirlConfig.city_style must be one of {tuple(CITY_STYLES)} or None, "
                                 f"got {self.city_style!r}.")
