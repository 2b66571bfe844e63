import pytest

from mtl_ray.config import Config, config_from_dict, config_to_dict, dump_config, load_config
from mtl_ray.errors import ConfigError

BASE = {"tasks": {"a": {"type": "classification", "source": "data.csv"}}}


def test_overrides_parse_types_and_nested_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks:\n  a: {type: regression, source: x.csv}\ntrain: {lr: 1.0e-4}\n")
    cfg = load_config(path, ["train.lr=3e-5", "model.sharing_depth=2", "tasks.a.loss_weight=2", "train.bf16=false"])
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.model.sharing_depth == 2
    assert cfg.tasks["a"].loss_weight == 2.0 and isinstance(cfg.tasks["a"].loss_weight, float)
    assert cfg.tasks["a"].name == "a"
    assert cfg.train.bf16 is False


def test_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict(BASE)
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "train.lrr: unknown key"),
        ("train.lr=abc", "train.lr: expected float"),
        ("train.max_steps=1.5", "train.max_steps: expected int"),
        ("model.pooling=max", "model.pooling: unknown pooling 'max'"),
        ("train.sampler=random", "train.sampler: unknown sampler 'random'"),
        ("train.weighting=famo", "train.weighting: unknown weighting 'famo'"),
        ("tasks.a.type=ner", "tasks.a.type: unknown task type 'ner'"),
        ("tasks.a.bogus=1", "tasks.a.bogus: unknown key"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("model.sharing_depth=-1", "model.sharing_depth: must be >= 0"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_from_dict_with(override)


def config_from_dict_with(override: str) -> Config:
    from mtl_ray.config import apply_overrides

    return config_from_dict(apply_overrides(BASE, [override]))


def test_pair_task_needs_second_field():
    with pytest.raises(ConfigError, match="tasks.p.text_pair_field: required"):
        config_from_dict({"tasks": {"p": {"type": "pair_classification", "source": "x.csv"}}})


def test_no_tasks_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="at least one task"):
        config_from_dict({})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_load():
    for name in ("configs/builtin.yaml", "configs/builtin_mixed.yaml", "configs/smoke.yaml"):
        cfg = load_config(name)
        assert cfg.tasks and all(t.source.startswith("builtin:") for t in cfg.tasks.values())
    mixed = load_config("configs/builtin_mixed.yaml")
    assert mixed.train.mixed_batches and mixed.train.loss_scaling == "auto" and mixed.train.sampler == "uniform"
    assert set(mixed.tasks) == set(load_config("configs/builtin.yaml").tasks) - {"mlm"}
