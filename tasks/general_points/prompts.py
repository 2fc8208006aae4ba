"""Prompt and feedback text of GeneralPoints, built from template files (`string.Template`: ${name}).

Placeholders of the prompt templates: ${target}, ${num_cards}, ${rule} (the active face-card rule as a
sentence), ${rule_short} (the same rule in a few tokens, for compact templates such as the CPU miniature's), ${cards} (the hand's labels, text variant), ${example_cards} (a format example). The feedback
template has ${reason} (the verifier's sentence). A template naming any other placeholder is rejected with a
clear error. Templates are read once per path and cached.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template

from tasks.common import file_stamp
from tasks.general_points.config import GeneralPointsConfig

RULE_SENTENCES = {
    "ten": "The ace (A) counts as 1, the face cards J, Q and K each count as 10, and every other card counts "
           "as its rank.",
    "distinct": "The ace (A) counts as 1, J counts as 11, Q counts as 12, K counts as 13, and every other card "
                "counts as its rank.",
}
RULE_SHORT = {"ten": "A=1, J=Q=K=10.", "distinct": "A=1, J=11, Q=12, K=13."}
_EXAMPLE_LABELS = ("A", "7", "Q", "3", "10", "K")
PROMPT_FIELDS = ("target", "num_cards", "rule", "rule_short", "cards", "example_cards")
FEEDBACK_FIELDS = ("reason",)


PACKAGED = "packaged:"


def _load_template(path: str | None, packaged_name: str, allowed: tuple[str, ...]) -> Template:
    """The template of `path` (a file, "packaged:NAME", or None: the packaged `packaged_name`), checked against
    the `allowed` placeholders; cached while the file is unchanged."""
    return _parse_template(path, packaged_name, allowed, file_stamp(path))


@lru_cache(maxsize=32)
def _parse_template(path: str | None, packaged_name: str, allowed: tuple[str, ...], stamp) -> Template:
    if path is not None and path.startswith(PACKAGED):  # another packaged template, named without a path, so a
        packaged_name, path = path[len(PACKAGED):], None  # config that uses one does not depend on the checkout
        if not resources.files("tasks.general_points.templates").joinpath(packaged_name).is_file():
            raise ValueError(f"there is no packaged template {packaged_name!r}; name a file of "
                             "tasks/general_points/templates after 'packaged:', or give a file path.")
    if path is None:
        text = resources.files("tasks.general_points.templates").joinpath(packaged_name).read_text("utf-8")
        where = f"packaged template {packaged_name}"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as error:
            raise ValueError(f"cannot read the template file {path!r} ({error.strerror}); give an existing text "
                             "file or None for the packaged template.") from None
        where = f"template file {path!r}"
    template = Template(text)
    if not template.is_valid():
        raise ValueError(f"the {where} has a malformed '$' placeholder; write $$ for a literal dollar sign.")
    unknown = sorted(set(template.get_identifiers()) - set(allowed))
    if unknown:
        raise ValueError(f"the {where} uses unknown placeholders {unknown}; allowed are {list(allowed)}.")
    return template


def prompt_text(labels: list[str], config: GeneralPointsConfig) -> str:
    """The first user turn for a hand with these card labels."""
    template = _load_template(config.prompt_template, f"{config.modality}.txt", PROMPT_FIELDS)
    examples = (_EXAMPLE_LABELS * 2)[: config.num_cards]
    return template.substitute(
        target=config.target,
        num_cards=config.num_cards,
        rule=RULE_SENTENCES[config.face_cards],
        rule_short=RULE_SHORT[config.face_cards],
        cards=", ".join(labels),
        example_cards=", ".join(f'"{label}"' for label in examples),
    ).strip()


def feedback_text(reason: str, config: GeneralPointsConfig) -> str:
    """The user turn that follows a failed response; `reason` is the verifier's feedback sentence."""
    template = _load_template(config.feedback_template, "feedback.txt", FEEDBACK_FIELDS)
    return template.substitute(reason=reason).strip()
