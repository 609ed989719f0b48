import json

import pytest

from pycohere import AutoConfig, Cohere2Config, CohereConfig
from pycohere.errors import CheckpointNotFoundError, ConfigError


def test_schema_4x_rope_theta_and_rope_scaling_type():
    c = CohereConfig.from_dict({"model_type": "cohere", "rope_theta": 8e6,
                                "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert c.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 8e6}
    c = CohereConfig(rope_theta=8e6, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    assert c.rope_type == "dynamic" and c.rope_theta == 8e6


def test_schema_5x_rope_parameters():
    c = CohereConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 5e4, "factor": 4.0})
    assert c.rope_parameters["original_max_position_embeddings"] == c.max_position_embeddings == 8192
    assert c.rope_theta == 5e4


def test_defaults_follow_transformers_5():
    c = CohereConfig()
    assert (c.num_key_value_heads, c.logit_scale, c.rope_theta, c.get_head_dim()) == (64, 0.0625, 5e5, 128)
    c2 = Cohere2Config(num_hidden_layers=8)
    assert c2.rope_theta == 1e4 and c2.sliding_window == 4096
    assert c2.layer_types == ["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + ["full_attention"]


def test_cohere2_pattern_and_explicit_layer_types():
    assert Cohere2Config(num_hidden_layers=4, sliding_window_pattern=2).layer_types == \
        ["sliding_attention", "full_attention"] * 2
    lt = ["full_attention", "sliding_attention"]
    assert Cohere2Config(num_hidden_layers=2, layer_types=lt).layer_types == lt


def test_head_dim_explicit_and_unknown_keys_kept(tmp_path):
    c = CohereConfig(hidden_size=64, num_attention_heads=4, head_dim=8, some_future_key={"a": 1})
    assert c.get_head_dim() == 8 and c.some_future_key == {"a": 1}
    c.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert again == c and again.to_dict()["some_future_key"] == {"a": 1}


@pytest.mark.parametrize("kw, message", [
    (dict(num_attention_heads=6, num_key_value_heads=4), "multiple of num_key_value_heads"),
    (dict(hidden_size=30, num_attention_heads=6, num_key_value_heads=6), "even"),
    (dict(hidden_size=30, num_attention_heads=4, num_key_value_heads=4), "not divisible"),
    (dict(rope_scaling={"type": "ntk-by-parts", "factor": 2}), "unknown rope type"),
    (dict(rope_scaling={"type": "linear"}), "needs 'factor'"),
    (dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}), "head_dim/2"),
    (dict(hidden_act="relu"), "hidden_act"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(layer_norm_eps=-1), "layer_norm_eps"),
])
def test_validation_errors_are_named_and_actionable(kw, message):
    with pytest.raises(ConfigError, match=message):
        CohereConfig(**kw)


def test_cohere2_validation():
    with pytest.raises(ConfigError, match="one entry per layer"):
        Cohere2Config(num_hidden_layers=3, layer_types=["full_attention"])
    with pytest.raises(ConfigError, match="layer_types entries"):
        Cohere2Config(num_hidden_layers=1, layer_types=["local"])
    with pytest.raises(ConfigError, match="sliding_window must be a positive integer"):
        Cohere2Config(num_hidden_layers=1, sliding_window=None, layer_types=["sliding_attention"])


def test_file_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON.*line 1"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="not a Cohere architecture"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ConfigError, match="no 'model_type'"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="use pycohere.AutoConfig"):
        CohereConfig.from_dict({"model_type": "cohere2"})


@pytest.mark.parametrize("kw, message", [
    (dict(head_dim="x"), "head_dim must be a positive integer"),
    (dict(eos_token_id="x"), "eos_token_id"),
    (dict(rope_scaling=[1, 2]), "JSON object"),
    (dict(rope_parameters="x"), "JSON object"),
    (dict(tie_word_embeddings="false"), "true or false"),
    (dict(rope_scaling={"rope_type": "longrope", "short_factor": "a", "long_factor": [1.0]}), "list of numbers"),
    (dict(partial_rotary_factor=0.5, rope_scaling={"rope_type": "linear", "factor": 2.0}), "rotate the whole head"),
    (dict(rope_parameters={"sliding_attention": {"rope_type": "default"}}), "nested per layer type"),
])
def test_malformed_values_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        CohereConfig(**kw)


def test_partial_rotary_factor_is_ignored_by_cohere_default_rope():
    # transformers' CohereRotaryEmbedding.compute_default_rope_parameters always uses the whole head
    from pycohere.spec.rope import compute_inv_freq
    c = CohereConfig(partial_rotary_factor=0.5, hidden_size=64, num_attention_heads=4)
    assert c.rope_parameters["partial_rotary_factor"] == 0.5
    assert compute_inv_freq(c)[0].shape == (8,)
