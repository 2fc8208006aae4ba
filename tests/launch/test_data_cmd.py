"""launch.data_cmd (`memgen data`): the files it writes read back through the task's own reader and equal the
task's generators' output; evaluation splits use the split's config; bad input stops with one sentence."""

import json

import numpy as np
import pytest

import tasks.general_points as gp
from launch import cli


def test_gp_l_expert_data_equals_the_task_generator(tmp_path, capsys):
    assert cli.main(["data", "--task", "gp-l", "--out", str(tmp_path), "--size", "5", "--seed", "3",
                     "target=24", "max_verify_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "5 conversations" in out and "gp-l_train_expert.jsonl" in out
    written = gp.read_jsonl(tmp_path / "gp-l_train_expert.jsonl")
    config = gp.GeneralPointsConfig(max_verify_steps=4)
    assert written == gp.expert_conversations(config, 3, 5)
    record = json.loads((tmp_path / "gp-l_train_expert.config.json").read_text())
    assert record["config"]["max_verify_steps"] == 4 and record["size"] == 5 and record["images"] == 0


def test_gp_vl_suboptimal_writes_images_and_multi_turn(tmp_path, capsys):
    assert cli.main(["data", "--task", "gp-vl", "--out", str(tmp_path), "--size", "2", "--kind", "suboptimal",
                     "image_width=224", "image_height=112"]) == 0
    written = gp.read_jsonl(tmp_path / "gp-vl_train_suboptimal.jsonl")
    config = gp.GeneralPointsConfig(modality="vision", image_width=224, image_height=112)
    assert written == gp.suboptimal_trajectories(config, 0, 2)
    assert all(len(conversation) >= 4 for conversation in written)
    assert len(list((tmp_path / "gp-vl_train_suboptimal_images").glob("*.png"))) == 2


@pytest.mark.parametrize("split", ["rule_ood", "visual_ood"])
def test_evaluation_split_first_prompts_use_the_split_config(tmp_path, split, capsys):
    assert cli.main(["data", "--task", "gp-vl", "--out", str(tmp_path), "--size", "3", "--split", split,
                     "image_width=224", "image_height=112"]) == 0
    written = gp.read_jsonl(tmp_path / f"gp-vl_{split}.jsonl")
    base = gp.GeneralPointsConfig(modality="vision", image_width=224, image_height=112)
    split_config = gp.evaluation_splits(base)[split]
    expected = [gp.reset(split_config, hand=h).conversation for h in gp.sample_hands(split_config, 0, 3)]
    assert written == expected and all(len(c) == 1 and c[0].role == "user" for c in written)
    record = json.loads((tmp_path / f"gp-vl_{split}.config.json").read_text())
    if split == "rule_ood":
        assert record["config"]["face_cards"] == "distinct" and record["config"]["require_face_card"]
    else:
        assert record["config"]["suits"] == "red"
        image = written[0][0].image
        # red suits: some pixel is clearly red
        assert np.any((image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80))


@pytest.mark.parametrize("argv, message", [
    (["--task", "gp-xl"], "unknown task 'gp-xl'"),
    (["--task", "gp-l", "targt=3"], "unknown config key 'targt' (did you mean 'target'?)"),
    (["--task", "gp-l", "num_cards=9"], "the config after the overrides is invalid: GeneralPointsConfig: num_cards"),
    (["--task", "gp-l", "--split", "visual_ood"], "has no split 'visual_ood'"),
    (["--task", "gp-l", "--size", "0"], "--size must be at least 1"),
    (["--task", "gp-l", "modality=vision"], "the modality comes from --task"),
])
def test_bad_input_stops_with_one_sentence(tmp_path, capsys, argv, message):
    assert cli.main(["data", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def _virl_routes(seed, size):
    import tasks.virl as virl
    return virl.generate_routes(virl.train_city(0), size, seed)


def test_virl_l_expert_data_is_every_decision_of_size_routes(tmp_path, capsys):
    import tasks.virl as virl
    from tasks.virl import expert
    assert cli.main(["data", "--task", "virl-l", "--out", str(tmp_path), "--size", "2", "--seed", "1"]) == 0
    written = expert.read_jsonl(tmp_path / "virl-l_train_expert.jsonl")
    config = virl.VirlConfig()
    expected = [c for route in _virl_routes(1, 2) for c in expert.optimal_conversations(route, config)]
    assert written == expected and len(written) > 2
    assert all(c[-1].role == "assistant" and '"action"' in c[-1].content for c in written)
    record = json.loads((tmp_path / "virl-l_train_expert.config.json").read_text())
    assert record["config"]["action_space"] == "absolute" and record["size"] == len(expected)


def test_virl_vl_suboptimal_has_images_and_the_verifier_turn(tmp_path, capsys):
    from tasks.virl import expert
    assert cli.main(["data", "--task", "virl-vl", "--out", str(tmp_path), "--size", "1", "--kind", "suboptimal",
                     "view_size=32"]) == 0
    written = expert.read_jsonl(tmp_path / "virl-vl_train_suboptimal.jsonl")
    assert written and all(len(c) == 4 and c[0].image is not None for c in written)
    assert written[0][0].image.shape == (2 * 32 + 5, 2 * 32 + 5, 3)
    assert "not accepted" in written[0][2].content


@pytest.mark.parametrize("split, action_space", [("in_distribution", "absolute"), ("rule_ood", "relative")])
def test_virl_l_evaluation_splits_first_prompts(tmp_path, capsys, split, action_space):
    import tasks.virl as virl
    from tasks.virl import expert
    from launch.data_cmd import VIRL_EVAL_ROUTE_SEED_OFFSET
    assert cli.main(["data", "--task", "virl-l", "--out", str(tmp_path), "--size", "2", "--split", split]) == 0
    written = expert.read_jsonl(tmp_path / f"virl-l_{split}.jsonl")
    config = virl.VirlConfig(action_space=action_space)
    routes = _virl_routes(VIRL_EVAL_ROUTE_SEED_OFFSET, 2)
    assert written == [virl.reset(route, config).conversation for route in routes]
    assert all(len(c) == 1 and c[0].role == "user" for c in written)
    assert (action_space == "relative") == ("slightly left" in written[0][0].content)
    assert json.loads((tmp_path / f"virl-l_{split}.config.json").read_text())["config"]["action_space"] == action_space


def test_virl_vl_visual_ood_uses_the_other_style_cities(tmp_path, capsys):
    import tasks.virl as virl
    from tasks.virl import expert
    from tasks.virl.render import CityViews
    assert cli.main(["data", "--task", "virl-vl", "--out", str(tmp_path), "--size", "2", "--split", "visual_ood",
                     "view_size=32"]) == 0
    written = expert.read_jsonl(tmp_path / "virl-vl_visual_ood.jsonl")
    config = virl.VirlConfig(modality="vision", view_size=32)
    expected = [virl.reset(route, config, views=CityViews(city, 32, 5, config.landmark_radius_m)).conversation
                for city, routes in virl.visual_ood_set(0, n_cities=2, routes_per_city=1) for route in routes]
    assert written == expected and all(c[0].image is not None for c in written)
    assert cli.main(["data", "--task", "virl-l", "--out", str(tmp_path), "--split", "visual_ood"]) == 2
    assert "has no split 'visual_ood'" in capsys.readouterr().err


def test_virl_training_routes_go_on_into_further_train_cities(tmp_path, capsys, monkeypatch):
    import tasks.virl as virl
    from tasks.virl import expert
    from launch import data_cmd
    monkeypatch.setattr(data_cmd, "VIRL_ROUTES_PER_TRAIN_CITY", 2)
    data_cmd.write_data("virl-l", tmp_path, size=3, seed=4)
    config = virl.VirlConfig()
    routes = list(virl.generate_routes(virl.train_city(0), 2, 4)) + list(virl.generate_routes(virl.train_city(1), 1, 4))
    expected = [c for route in routes for c in expert.optimal_conversations(route, config)]
    assert expert.read_jsonl(tmp_path / "virl-l_train_expert.jsonl") == expected
