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


def test_the_learner_reads_the_run_section_itself():
    # One schema: the run's `learner` section IS a learner.LearnerConfig (plus its pool's resources).
    from learner.config import LearnerConfig

    config = load_config(None, ["learner.diffu_grpo.iterations=3", "learner.objective=diffu_grpo"])
    assert isinstance(config.learner, LearnerConfig)
    assert config.learner.diffu_grpo.iterations == 3 and config.learner.n_t == LearnerConfig().n_t


def test_clip_resolves_to_dares_for_stale_runs_and_the_resolved_config_shows_it():
    assert load_config(None).learner.clip_eps is None
    stale = load_config(None, ["trainer.max_staleness=1"])
    assert stale.learner.clip_eps == 0.2 and "clip_eps: 0.2" in dump_config(stale)
    assert load_config(None, ["trainer.max_staleness=1", "learner.clip_eps=null"]).learner.clip_eps is None


def test_partial_sampling_keys_keep_the_run_defaults():
    config = load_config(None, ["rollout.sampling.gen_length=32"])
    assert (config.rollout.sampling.gen_length, config.rollout.sampling.steps) == (32, 16)


def test_placement_is_in_the_printed_config():
    config = load_config(None, ["rollout.placement.resources={host1: 0.01}",
                                "learner.placement.strategy=STRICT_PACK"])
    text = dump_config(config)
    assert "host1: 0.01" in text and "STRICT_PACK" in text
    assert config.rollout.placement.strategy == "SPREAD"
    with pytest.raises(ValueError, match="learner.placement.strategy"):
        load_config(None, ["learner.placement.strategy=NEAR"])


def test_bad_diffu_grpo_setting_is_named():
    with pytest.raises(ValueError, match="learner.diffu_grpo.iterations"):
        load_config(None, ["learner.diffu_grpo.iterations=0"])
