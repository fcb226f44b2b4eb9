"""The run config: validation errors name the key, presets load, overrides parse."""

import pytest

from cluster.config import CONFIG_DIR, dump_config, load_config, parse_override


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="learner.lrr"):
        load_config(None, ["learner.lrr=1e-6"])


def test_bad_value_is_named():
    with pytest.raises(ValueError, match="rollout.num_workers"):
        load_config(None, ["rollout.num_workers=0"])


def test_blocks_must_divide_the_response():
    with pytest.raises(ValueError, match="block_length"):
        load_config(None, ["rollout.sampling.gen_length=20"])


def test_overrides_parse_as_yaml():
    assert parse_override("learner.lr=1e-6") == ("learner.lr", 1e-6)
    assert parse_override("learner.betas=[0.9, 0.95]") == ("learner.betas", [0.9, 0.95])
    assert parse_override("rollout.sampling.threshold=null") == ("rollout.sampling.threshold", None)
    with pytest.raises(ValueError, match="key=value"):
        parse_override("learner.lr")


def test_every_preset_validates_and_round_trips(tmp_path):
    presets = sorted(CONFIG_DIR.glob("*.yaml"))
    assert presets, "configs/ has no presets"
    for preset in presets:
        if preset.name == "runtime_env.yaml":
            continue
        config = load_config(str(preset))
        again = tmp_path / preset.name
        again.write_text(dump_config(config))
        assert load_config(str(again)) == config, preset.name


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("no-such-preset")


def test_the_tiny_preset_is_the_embedded_default():
    # `bgpo train` with no arguments and `--config tiny-sudoku` must be the same run.
    assert load_config("tiny-sudoku") == load_config(None)


def test_every_learner_setting_reaches_the_learner():
    # The learner's dataclass is built from the run's `learner` section by field name, so a
    # dataclass field without a config key would be unreachable from YAML or the command line.
    from dataclasses import fields

    from cluster.actors import learner_config
    from learner.worker import LearnerConfig

    section = set(load_config(None).learner.model_dump())
    assert {f.name for f in fields(LearnerConfig)} - {"seed"} <= section

    config = load_config(None, ["seed=7", "learner.diffu_grpo.iterations=3", "learner.dual_clip=2.0",
                                "learner.objective=diffu_grpo", "learner.diffu_grpo.beta=0.0"])
    built = learner_config(config)
    assert (built.seed, built.objective, built.dual_clip) == (7, "diffu_grpo", 2.0)
    assert (built.diffu_grpo.iterations, built.diffu_grpo.beta) == (3, 0.0)
    assert built.diffu_grpo.clip_eps == 0.5  # untouched defaults come through too


def test_bad_diffu_grpo_setting_is_named():
    with pytest.raises(ValueError, match="learner.diffu_grpo.iterations"):
        load_config(None, ["learner.diffu_grpo.iterations=0"])
