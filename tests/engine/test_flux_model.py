"""FLUX.1 loading: kohya's four files (bf16 or fp8 transformer) and a diffusers folder give the
models they were written from; the flow-matching objective draws as kohya does."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from engine.tiny_flux import tiny_flux_models, write_flux_files

    folder = tmp_path_factory.mktemp("flux-written")
    models = tiny_flux_models(folder)
    return models, write_flux_files(models, folder)


def _same_weights(a, b) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(
        torch.equal(left[key], right[key].to(left[key].dtype)) for key in left
    )


def test_single_files_load_the_models_they_were_written_from(written):
    from engine.families.flux_files import check_flux_files
    from engine.families.flux_load import load_flux_parts

    models, files = written
    info = check_flux_files(files.transformer, files.vae, files.clip, files.t5)
    parts = load_flux_parts(info, None, torch.float32)
    for original, loaded in (
        (models.transformer, "transformer"),
        (models.vae, "vae"),
        (models.clip, "clip"),
        (models.t5, "t5"),
    ):
        assert _same_weights(original, parts[loaded]), loaded
    clip, t5 = parts["tokenizers"]
    assert t5.model_max_length == 512 and clip.model_max_length == 77
    ids = t5(["a photo of usu bear"]).input_ids[0]
    assert ids[-1] == t5.eos_token_id and t5.unk_token_id not in ids


def test_an_fp8_transformer_file_loads_widened(tmp_path, written):
    from engine.families.flux_files import check_flux_file
    from engine.families.flux_load import load_transformer
    from engine.tiny_flux import write_flux_files

    models, _ = written
    files = write_flux_files(models, tmp_path, transformer_dtype=torch.float8_e4m3fn)
    loaded = load_transformer(check_flux_file(files.transformer, "transformer"), torch.float32)
    expected = {
        key: value.to(torch.float8_e4m3fn).float() for key, value in models.transformer.state_dict().items()
    }
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    assert next(loaded.parameters()).dtype == torch.float32


def test_the_tokenizers_must_be_found(tmp_path, written):
    import shutil

    from engine.errors import ModelFileError
    from engine.families.flux_load import find_flux_tokenizers

    _, files = written
    alone = tmp_path / files.transformer.name
    shutil.copy(files.transformer, alone)
    with pytest.raises(ModelFileError, match="no tokenizers for this FLUX.1 model") as caught:
        find_flux_tokenizers(alone, None)
    assert "tokenizer_2" in caught.value.render()
    assert find_flux_tokenizers(alone, files.transformer.parent) == (
        files.transformer.parent / "tokenizer",
        files.transformer.parent / "tokenizer_2",
    )


def test_noise_levels_are_drawn_as_kohya_draws_them():
    from engine.families.flux_objective import FlowSettings, draw_sigma

    def draws(settings, n=4000):
        generator = torch.Generator().manual_seed(0)
        return torch.tensor([draw_sigma(settings, generator) for _ in range(n)])

    uniform = draws(FlowSettings(timestep_sampling="uniform"))
    sigmoid = draws(FlowSettings(timestep_sampling="sigmoid"))
    shifted = draws(FlowSettings(timestep_sampling="shift", discrete_flow_shift=3.1582))
    assert abs(uniform.mean() - 0.5) < 0.02 and uniform.min() >= 0 and uniform.max() < 1
    assert abs(sigmoid.median() - 0.5) < 0.03  # the sigmoid of a normal draw is symmetric around 0.5
    # shift s' = 3.1582 s / (1 + 2.1582 s) maps the sigmoid's median 0.5 to 3.1582 / 4.1582
    assert abs(shifted.median() - 3.1582 / 4.1582) < 0.03
    generator = torch.Generator().manual_seed(5)
    plain = draw_sigma(FlowSettings(timestep_sampling="sigmoid"), generator)
    generator = torch.Generator().manual_seed(5)
    assert draw_sigma(
        FlowSettings(timestep_sampling="shift", discrete_flow_shift=3.0), generator
    ) == pytest.approx(3 * plain / (1 + 2 * plain))


def test_latents_pack_into_2x2_tokens_with_their_positions():
    from engine.families.flux_objective import image_ids, pack_latents, unpack_latents

    latents = torch.randn(2, 16, 4, 6)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 2 * 3, 64)
    # Token 0 holds the 2x2 patch at the top left, channel by channel.
    assert torch.equal(tokens[0, 0].view(16, 2, 2), latents[0, :, :2, :2])
    assert torch.equal(unpack_latents(tokens, latents.shape), latents)
    ids = image_ids(4, 6, "cpu")
    assert ids.shape == (6, 3) and ids[4].tolist() == [0, 1, 1]  # row 1, column 1 of a 2 x 3 grid


def test_the_objective_noises_toward_the_velocity_target():
    from engine.config import TrainingSection
    from engine.families.flux_objective import FlowMatching, FlowSettings, unpack_latents

    objective = FlowMatching(None, FlowSettings(), guidance=True)
    latents = torch.randn(2, 16, 4, 4)
    training = TrainingSection()
    noised = objective.noised(latents, [3, 7], training)
    again = objective.noised(latents, [3, 7], training)
    assert torch.equal(noised.inputs, again.inputs)  # drawn from each sample's own generator
    noise = unpack_latents(noised.target, latents.shape) + latents
    sigma = noised.timesteps.view(-1, 1, 1, 1)
    torch.testing.assert_close(
        unpack_latents(noised.inputs, latents.shape), (1 - sigma) * latents + sigma * noise
    )
    assert noised.conditioning["guidance"].tolist() == [1.0, 1.0]
    assert (
        "guidance"
        not in FlowMatching(None, FlowSettings(), guidance=False)
        .noised(latents, [3, 7], training)
        .conditioning
    )


def test_generate_loads_a_flux_model_as_the_answers_name_it(tmp_path, written):
    """`generate --answers FILE` passes FLUX.1's other files on to loading (tui_lora/commands/base_model.py)."""
    import argparse

    from engine.config import load_answers
    from tests.conftest import write_flux_answers
    from tui_lora.commands.base_model import base_model

    _, files = written
    (tmp_path / "train" / "1_x").mkdir(parents=True)
    answers = load_answers(write_flux_answers(tmp_path, files, tmp_path / "train"), check_paths=False)
    base = base_model(argparse.Namespace(model=None, tokenizer=None, vae=None, clip_skip=None), answers, no_model_fix="")
    assert (base.flux.ae, base.flux.clip_l, base.flux.t5xxl) == (files.vae, files.clip, files.t5)
    assert base.flux.flow.discrete_flow_shift == 3.1582
