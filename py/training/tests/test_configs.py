"""Every shipped recipe in py/training/configs names known flags, a registered model (and teacher), and
builds with its model_kwargs."""
import pathlib

import pytest
import yaml

from py.models import create_model, list_models
from py.training import config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_is_a_recipe_for_every_named_model():
    names = {c.stem for c in CONFIGS}
    published = [m for m in list_models() if not m.endswith("_mnist")]
    assert set(published) <= names, sorted(set(published) - names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_is_valid(path):
    values = yaml.safe_load(path.read_text())
    unknown = [k for k in values if k not in config.FLAGS]
    assert not unknown, unknown
    assert values["model"] == path.stem and values["model"] in list_models()
    create_model(values["model"], **values.get("model_kwargs", {}))
    if values.get("teacher_model"):
        assert values["teacher_model"] in list_models()
        create_model(values["teacher_model"], **values.get("teacher_model_kwargs", {}))
