"""The answers file: schema, did-you-mean errors, path resolution, atomic save."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.config import (
    PATH_KEYS,
    Answers,
    answers_from_dict,
    answers_to_toml,
    load_answers,
    save_answers,
)
from engine.errors import AnswersError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "answers.toml"

MINIMAL = """
[model]
path = "model"
[dataset]
train_dir = "train"
[output]
name = "usu_bear"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "train").mkdir(exist_ok=True)
    path = tmp_path / "answers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_seed_article(tmp_path):
    answers = load_answers(write(tmp_path, MINIMAL))
    assert answers.training.epochs == 10
    assert answers.training.batch_size == 1
    assert answers.network.effective_alpha == answers.network.dim
    assert answers.version == 1


def test_relative_paths_resolve_against_the_file_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    answers = load_answers(write(tmp_path, MINIMAL))
    assert answers.model.path == (tmp_path / "model").resolve()
    assert answers.dataset.train_dir == (tmp_path / "train").resolve()
    assert answers.output.dir == (tmp_path / "output").resolve()
    assert answers.lora_path == (tmp_path / "output" / "usu_bear.safetensors").resolve()


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(AnswersError) as err:
        load_answers(write(tmp_path, MINIMAL + "[training]\nepoch = 3\n"))
    message = err.value.render()
    assert "training.epoch" in message and "did you mean `epochs`" in message
    assert str(tmp_path / "answers.toml") in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[training]\nbatch_size = \"two\"\n", "training.batch_size"),
        ("[training]\nbatch_size = 0\n", "greater than or equal to 1"),
        ("[network]\ndim = 100000\n", "network.dim"),
        ("[training]\nlr_scheduler = \"cosine_restarts\"\n", "'constant', 'cosine' or 'linear'"),
    ],
)
def test_wrong_type_or_range_names_the_key(tmp_path, extra, expected):
    with pytest.raises(AnswersError) as err:
        load_answers(write(tmp_path, MINIMAL + extra))
    assert expected in err.value.render()


def test_missing_required_key(tmp_path):
    with pytest.raises(AnswersError, match="`output.name` is required"):
        load_answers(write(tmp_path, MINIMAL.replace('name = "usu_bear"', "")))


def test_not_toml(tmp_path):
    with pytest.raises(AnswersError, match="not valid TOML"):
        load_answers(write(tmp_path, "this is : not toml ]"))


def test_missing_model_path_is_named(tmp_path):
    path = write(tmp_path, MINIMAL.replace('path = "model"', 'path = "nowhere.safetensors"'))
    with pytest.raises(AnswersError, match=r"model\.path.*nowhere\.safetensors"):
        load_answers(path)


def test_unsupported_version(tmp_path):
    with pytest.raises(AnswersError, match="version 2 is not supported"):
        load_answers(write(tmp_path, "version = 2\n" + MINIMAL))


def test_save_is_atomic_and_never_overwrites_unasked(tmp_path):
    answers = load_answers(write(tmp_path, MINIMAL))
    target = tmp_path / "saved.toml"
    save_answers(answers, target)
    assert load_answers(target) == answers
    with pytest.raises(AnswersError, match="already exists"):
        save_answers(answers, target)
    save_answers(answers, target, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_through_toml(tmp_path):
    answers = load_answers(write(tmp_path, MINIMAL + "[training]\nmin_snr_gamma = 5.0\n"))
    again = answers_from_dict(tomllib.loads(answers_to_toml(answers)))
    assert again == answers


def _schema_keys(model: type, prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys |= _schema_keys(annotation, f"{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_example_file_documents_every_key():
    text = EXAMPLE.read_text(encoding="utf-8")
    # Commented-out keys count as documented: uncomment them all and parse.
    uncommented = "\n".join(line[2:] if line.startswith("# ") and " = " in line.split("#")[1] else line for line in text.splitlines())
    data = tomllib.loads(uncommented)
    documented = {f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values}
    documented |= {key for key, value in data.items() if not isinstance(value, dict)}
    assert documented == _schema_keys(Answers)
    # Every documented value is valid; the network settings of each type with that type.
    from engine.network.types import APPLIES_TO, NETWORK_TYPES

    for network_type in NETWORK_TYPES:
        network = {key: value for key, value in data["network"].items() if key not in APPLIES_TO or network_type in APPLIES_TO[key][0]}
        if network_type in ("loha", "lokr"):
            network["dora"] = False
        if network_type == "lokr":
            network.pop("alpha")  # no effect with full_matrix
        answers_from_dict({**data, "network": {**network, "type": network_type}})


def test_path_keys_are_all_paths():
    for section, key in PATH_KEYS:
        field = Answers.model_fields[section].annotation.model_fields[key]
        assert "Path" in str(field.annotation)
