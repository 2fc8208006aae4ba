"""Fixtures shared by the launch tests."""

import pytest


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Short GeneralPoints templates, so the tiny model's contexts (its tokenizer has few merges) stay short."""
    folder = tmp_path_factory.mktemp("templates")
    (folder / "prompt.txt").write_text("Cards ${cards}. Make ${target}. Answer in JSON.")
    (folder / "feedback.txt").write_text("Wrong: ${reason}")
    return [f"episodes.prompt_template={folder / 'prompt.txt'}",
            f"episodes.feedback_template={folder / 'feedback.txt'}", "episodes.feedback_len=64"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One tokenizer cache per test module (MEMGEN_CACHE), so the offline tokenizer is trained once per module."""
    path = tmp_path_factory.mktemp("memgen-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEMGEN_CACHE", str(path))
        yield path
