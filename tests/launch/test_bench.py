"""launch.bench (`memgen bench`): a quick tiny run of two cheap benchmarks writes bench.json and bench.md with positive
figures, the goal peers and their ratios, compile seconds and the machine; a quick tiny run of the model benchmarks
(sft_step, sampler, ppo_update, conversation_rows, episode) gives their rows with positive rates, the transformers
peers' ratios and, for the PPO update, first-minibatch losses that agree with the peer's; unknown names stop with one
sentence; the GPU SFT benchmark's default shape plans to fit one 80 GB H100, and a shape that does not fit the device
stops in one sentence before any parameter is made."""

import argparse
import json
import math

import pytest

from launch import bench, cli


def test_quick_tiny_run_writes_json_and_markdown(tmp_path, capsys):
    assert cli.main(["bench", "--out", str(tmp_path), "--quick", "--preset", "tiny",
                     "--only", "vision_encoder,verifier"]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["errors"] == {} and set(result["seconds"]) == {"verifier", "vision_encoder"}
    names = [r["name"] for r in result["rows"]]
    assert names[:3] == ["verify GP-L typical", "verify GP-VL typical", "sample hands in-distribution"]
    assert names[3].startswith("vision encoder")
    for r in result["rows"]:
        assert r["memgen"] > 0 and math.isfinite(r["memgen"])
    verify = result["rows"][0]
    assert verify["peer"] == 50_000 and verify["ratio"] == verify["memgen"] / 50_000
    assert result["rows"][3]["compile_s"] > 0 and result["rows"][3]["raw"]["preset"] == "tiny"
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["devices"] and machine["jax"]
    table = (tmp_path / "bench.md").read_text()
    assert "| name | config | memgen | peer | ratio | compile s |" in table
    assert "verify GP-L typical" in table and "(goal)" in table and machine["platform"] in table
    assert table in capsys.readouterr().out


def test_ratio_direction():
    assert bench.row("x", "", 200.0, "tokens/s", 100.0, "peer")["ratio"] == 2.0
    assert bench.row("x", "", 100.0, "bytes", 150.0, "XLA", higher_is_better=False)["ratio"] == 1.5
    assert bench.row("x", "", 100.0, "tokens/s")["ratio"] is None


def test_unknown_benchmark_stops_with_one_sentence(tmp_path, capsys):
    assert cli.main(["bench", "--out", str(tmp_path), "--only", "verifier,warp"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark warp" in err and err.count("\n") == 1
    assert not (tmp_path / "bench.json").exists()


def test_quick_tiny_model_benchmarks_have_rows_and_peer_ratios(tmp_path):
    assert cli.main(["bench", "--out", str(tmp_path), "--quick", "--preset", "tiny",
                     "--only", "sampler,sft_step,ppo_update,conversation_rows,episode"]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["errors"] == {} and set(result["seconds"]) == {"sampler", "sft_step", "ppo_update",
                                                                 "conversation_rows", "episode"}
    rows = {r["name"]: r for r in result["rows"]}
    for r in rows.values():
        assert r["memgen"] > 0 and math.isfinite(r["memgen"])
    for name, peer in [("sampler generate (CPU)", "transformers generate"),
                       ("SFT train step (CPU)", "transformers + torch AdamW"),
                       ("PPO update (CPU)", "transformers + torch Adam")]:
        r = rows[name]
        assert r["peer_name"] == peer and r["peer"] > 0 and r["ratio"] == r["memgen"] / r["peer"]
        assert r["compile_s"] > 0
    ppo = rows["PPO update (CPU)"]["raw"]
    assert ppo["preset"] == "tiny" and ppo["losses_agree"]
    assert abs(ppo["memgen_first_loss"] - ppo["transformers_first_loss"]) < 1e-3
    assert ppo["optimizer_steps"] == ppo["epochs"] * ppo["transitions"] // ppo["minibatch_size"]
    conversations = rows["PPO update: conversation rows (CPU)"]
    assert conversations["peer_name"] == "per-transition rows" and conversations["peer"] > 0
    tokens = {layout: conversations["raw"][layout]["model_tokens_per_epoch"] for layout in ("rows", "transitions")}
    assert tokens["rows"] < tokens["transitions"]
    assert rows["rollout episodes"]["unit"] == "episodes/s"
    outside = rows["rollout time outside generation"]
    assert 0 < outside["memgen"] < 100 and outside["peer"] == 10.0 and outside["ratio"] == 10.0 / outside["memgen"]
    turns = rows["episode: later turn / first turn"]
    assert turns["peer"] == 1.5 and turns["compile_s"] > 0 and turns["raw"]["turns"] == 2
    table = (tmp_path / "bench.md").read_text()
    assert "PPO update (CPU)" in table and "(transformers + torch Adam)" in table and "rollout episodes" in table


def test_gpu_sft_benchmark_plans_first_and_stops_when_the_device_is_too_small(monkeypatch):
    script = bench._script("sft_train")

    class SmallGPU:
        device_kind = "NVIDIA H100 80GB HBM3"

        def memory_stats(self):
            return {"bytes_limit": 40 * 2**30}

    def init_params(*args, **kwargs):
        raise AssertionError("the plan must stop the run before any parameter is made")

    monkeypatch.setattr(script.jax, "devices", lambda *args: [SmallGPU()])
    monkeypatch.setattr(script.model, "init_params", init_params)
    args = argparse.Namespace(shape_preset="11b", **script.GPU_SHAPE, remat="full", attention_block=0,
                              freeze_vision=False, peak_tflops=None, repeats=1)
    with pytest.raises(SystemExit) as stop:
        script.gpu_benchmark(args)
    message = str(stop.value)
    assert ". " not in message and "but NVIDIA H100 80GB HBM3 gives JAX 40.0 GiB" in message, message
    planned_gib = float(message.split("plans at ")[1].split(" GiB")[0])
    # the default shape "fits" an H100 in the planner's sense (under 90%) at device_checks.sh's memory fraction
    assert 40 < planned_gib < 0.9 * 0.95 * 79.6
