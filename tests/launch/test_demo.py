"""The interim `memgen demo`: a GeneralPoints sample episode with a wrong and a correct response."""

import numpy as np
from PIL import Image

from launch.cli import main


def test_demo_prints_an_episode_and_writes_the_card_image(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "[Task Description]" in printed
    assert "category wrong_value" in printed and "category correct" in printed
    assert "reward -1" in printed and "reward +5" in printed
    assert "did not pass this trial because" in printed
    image = np.asarray(Image.open(tmp_path / "cards.png"))
    assert image.shape == (560, 1120, 3)
