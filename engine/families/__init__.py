"""Model families behind one small interface.

A family knows how to turn captions into its denoiser's conditioning, run the denoiser (a UNet for
SD 1.x, 2.x and SDXL), train it (its objective: noise, timesteps, target, loss weights) and name LoRA
modules the way kohya and the web UIs expect. The training loop only talks to this interface, so
adding a family adds a family module, its objective and its loaders, not a loop change.

    base.py          the interface: ModelFamily, LoadedModel, ImageGeometry, ModelInfo
    objectives.py    training objectives (DDPM noise prediction: epsilon or v)
    sd.py, sdxl.py   the families (sgm_names.py: SDXL's kohya key names)
    flux.py          FLUX.1 dev / schnell (flux_objective.py: flow matching; flux_*.py: its files,
                     loading, LoRA names, memory and sampling)
    registry.py      every family by name, and which one a UNet config belongs to
    loading.py       load_base_model / inspect_base_model: the layout, the family, its loader
    diffusers_folder.py   the diffusers-folder layout
    single_file.py   the single-file layout, with a module per job: checkpoint_files.py (safe
                     reading), ldm_config.py (configs from tensor shapes), ldm_models.py (building),
                     file_prediction.py, tokenizers.py, sdxl_file.py (SDXL's parts), templates.py
    vae.py           a VAE of the user's choice

docs/families.md says what a new family adds.
"""

from engine.families.base import ImageGeometry, LoadedModel, ModelFamily, ModelInfo
from engine.families.loading import inspect_base_model, load_base_model

__all__ = ["ImageGeometry", "LoadedModel", "ModelFamily", "ModelInfo", "inspect_base_model", "load_base_model"]
