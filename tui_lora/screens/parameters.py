"""Parameters: how to train, each field with a one-line help and checked as it is typed.

A value the answers schema refuses is shown in red under its field with the reason, and is not
taken: the draft keeps the last accepted value, and Next stays here until every field is right.
Defaults come from the model's family (SDXL: 1024 px, the UNet only, its learning rates) and the
environment check for that family (batch size, processes, gradient checkpointing, optimizer,
latent caching) where the user has not chosen; precision stays `auto`, which the engine resolves
on the machine that trains, so a file written here still fits a GPU machine it is copied to.

FLUX.1's defaults also depend on the card (engine/checks/defaults.py flux_card_defaults: fp8
weights, offloaded blocks, 512 px on 12 GB cards).

Some fields are shown only where they apply: GPUs (processes) on a machine with more than one
GPU, the second text encoder's learning rate for SDXL, fp8 weights, offloading and timestep
sampling for FLUX.1, each network type's own settings (DoRA and
dropout for lora/locon, conv_dim/conv_alpha for locon/loha/lokr, factor and full_matrix for lokr).
Choosing another type drops the settings of the old one. Under the network settings, the file size
each type leads to (for the model's family, fp16) is shown.
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.widgets import Checkbox, Input, Select, Static

from engine.config import effective_batch
from tui_lora.fields import PARAMETER_GROUPS, FieldSpec, accept, shown_value
from tui_lora.i18n import has_message, t
from tui_lora.screens.base import WizardScreen
from tui_lora.widgets.form import FormRow
from tui_lora.widgets.on_off import OnOff
from tui_lora.widgets.path_input import PathInput

SPECS = {spec.key: spec for group in PARAMETER_GROUPS.values() for spec in group}


def control_id(key: str) -> str:
    return "field-" + key.replace(".", "-")


def key_of(widget_id: str | None) -> str:
    """`field-training-batch_size` -> `training.batch_size`."""
    return (widget_id or "").removeprefix("field-").replace("-", ".", 1)


def choice_label(spec: FieldSpec, value: str) -> str:
    message = f"choice.{spec.key}.{value}"
    return t(message) if has_message(message) else value


def several_gpus(facts) -> bool:
    """More than one GPU that torch can train on (engine MachineFacts)."""
    from engine.checks.recommend import visible_gpus

    return facts is not None and facts.torch.cuda_available and len(visible_gpus(facts)) > 1


def model_family(draft) -> str:
    """The base model's family: as the Model step read it, else read now (call from a worker:
    it reads the model's headers), else SD 1.x."""
    if draft.model_family:
        return draft.model_family
    path = draft.get("model.path")
    if path:
        from tui_lora.screens.model import read_model_info

        flux_files = tuple(draft.get(f"model.{slot}") for slot in ("ae", "clip_l", "t5xxl"))
        info, _ = read_model_info(path, draft.get("model.tokenizer"), flux_files)
        if info is not None:
            return info.family
    return "sd1"


# Parameters-screen conditions on the network type (engine.network.types says which settings each takes).
NETWORK_CONDITIONS = {
    "lora_types": ("lora", "locon"),
    "conv_types": ("locon", "loha", "lokr"),
    "lokr": ("lokr",),
    "lycoris_types": ("loha", "lokr"),
}


def network_size_line(network: dict[str, Any], family: str) -> str:
    """"File size (fp16): lora 9.4 MB · locon 19.5 MB · ..." with the chosen type first; empty when
    the network settings are not valid yet."""
    from pydantic import ValidationError

    from engine.config import NetworkSection
    from engine.network.adapters import NetworkSpec
    from engine.network.size import network_file_bytes
    from engine.network.types import APPLIES_TO, DORA_TYPES, NETWORK_TYPES

    try:
        section = NetworkSection.model_validate(network)
    except ValidationError:
        return ""
    sizes = []
    for network_type in NETWORK_TYPES:
        values = section.model_dump()
        values["type"] = network_type
        if network_type != section.type:  # the other types with their defaults for what they alone take
            for name, (types, _) in APPLIES_TO.items():
                if network_type not in types:
                    values[name] = None
            values["dora"] = values["dora"] and network_type in DORA_TYPES
        spec = NetworkSpec.from_section(NetworkSection.model_validate(values))
        size = network_file_bytes(family, spec, train_text_encoder=section.train_text_encoder)
        sizes.append((network_type, size))
    chosen = dict(sizes)[section.type]
    others = " · ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes if name != section.type)
    return t("parameters.network_size", size=f"{chosen / 1e6:.1f} MB", others=others)


def flux_card_defaults(facts) -> dict[str, Any]:
    """FLUX.1's settings for the GPU that trains (engine MachineFacts); the CPU's without one."""
    from engine.checks.defaults import flux_card_defaults as for_card
    from engine.checks.recommend import training_device

    return for_card(training_device(facts).vram_total)


class ParametersScreen(WizardScreen):
    STEP = "parameters"
    AUTO_FOCUS = "#field-training-batch_size"

    def __init__(self) -> None:
        super().__init__()
        self.invalid: set[str] = set()
        self.family: str | None = None  # the model family the defaults are for, once known
        self.flux_card: dict[str, Any] = {}  # FLUX.1's settings for this machine's card

    def compose_body(self) -> ComposeResult:
        yield Static(t("parameters.intro"), classes="intro", markup=False)
        yield Static(t("parameters.defaults_pending"), id="defaults-note", classes="help", markup=False)
        for group, specs in PARAMETER_GROUPS.items():
            yield Static(t(f"parameters.group.{group}"), classes="heading", markup=False)
            for spec in specs:
                yield FormRow(spec.label, self.control(spec), help=spec.help, id="row-" + control_id(spec.key))
            if group == "network":
                yield Static("", id="network-size", classes="help", markup=False)

    def control(self, spec: FieldSpec):
        value = self.draft.get(spec.key)
        if spec.kind == "choice":
            options = [(choice_label(spec, choice), choice) for choice in spec.choices]
            return Select(options, value=value if value in spec.choices else spec.choices[0], allow_blank=False, compact=True, id=control_id(spec.key))
        if spec.kind == "bool":
            return OnOff(bool(value), compact=True, id=control_id(spec.key))
        if spec.kind == "path":
            return PathInput(shown_value(value), folders_only=True, id=control_id(spec.key))
        return Input(shown_value(value), compact=True, id=control_id(spec.key), placeholder=t("parameters.empty_default") if spec.optional else "")

    def on_mount(self) -> None:
        self.family = self.draft.model_family
        self.show_conditional_fields()
        self.read_machine()

    @work(thread=True, exclusive=True, group="parameters-machine", exit_on_error=False)
    def read_machine(self) -> None:
        facts = self.wizard.machine_facts()
        family = model_family(self.draft)
        self.app.call_from_thread(self.apply_machine, facts, family)

    def apply_machine(self, facts, family: str) -> None:
        """The family's defaults, then the settings that fit this machine for that family, where
        the user has not chosen."""
        from engine.checks.costs import FAMILY_COSTS
        from engine.checks.defaults import family_defaults, is_flux
        from engine.checks.recommend import recommend

        self.family = family
        changed = self.draft.apply_defaults(family_defaults(family))
        recommendations = recommend(
            facts,
            # A family without its own cost figures is fitted with SD 1.x's, as `check` does.
            family=family if family in FAMILY_COSTS else "sd1",
            resolution=self.draft.get("dataset.resolution"),
            network_dim=self.draft.get("network.dim", 8),
            train_text_encoder=self.draft.get("network.train_text_encoder"),
            gradient_accumulation=self.draft.get("training.gradient_accumulation", 1),
            fp16_safe_vae=self.draft.get("model.vae") is not None,  # the Model step's VAE runs in half precision
        )
        changed += self.wizard.apply_recommendations(recommendations)
        self.flux_card = flux_card_defaults(facts) if is_flux(family) else {}
        changed += self.draft.apply_defaults(self.flux_card)
        if changed:
            self.changed()
        for key in changed:
            self.show_draft_value(key)
        self.show_conditional_fields()
        self.show_recommendations(recommendations)

    def condition_holds(self, condition: str) -> bool:
        if condition == "several_gpus":
            return several_gpus(self.wizard.facts) or self.draft.get("training.processes", 1) != 1
        if condition == "sdxl":
            return self.family == "sdxl" or self.draft.get("training.text_encoder_2_lr") is not None
        if condition == "flux":
            from engine.checks.defaults import is_flux

            return is_flux(self.family)
        network_type = self.draft.get("network.type", "lora")
        return network_type in NETWORK_CONDITIONS.get(condition, (network_type,))

    def show_conditional_fields(self) -> None:
        """Fields that apply here are shown; hidden ones are skipped by Tab."""
        for spec in SPECS.values():
            if spec.shown_when is not None:
                self.query_one("#row-" + control_id(spec.key), FormRow).display = self.condition_holds(spec.shown_when)
        self.show_effective_batch()
        self.show_network_size()

    @work(thread=True, exclusive=True, group="parameters-network-size", exit_on_error=False)
    def show_network_size(self) -> None:
        """The file size of each network type with the other settings as they are (reads the
        family's published layer shapes once: a worker)."""
        line = network_size_line(dict(self.draft.answers.get("network", {})), self.family or "sd1")
        self.app.call_from_thread(self.query_one("#network-size", Static).update, line)

    def drop_other_types_settings(self, network_type: str) -> None:
        """Another network type: the settings only the old type takes go (they would be refused)."""
        from engine.network.types import APPLIES_TO, DORA_TYPES

        for name, (types, _) in APPLIES_TO.items():
            if network_type not in types and self.draft.get(f"network.{name}") is not None:
                self.draft.set(f"network.{name}", None)
                self.invalid.discard(f"network.{name}")
                self.show_draft_value(f"network.{name}")
        if network_type not in DORA_TYPES and self.draft.get("network.dora"):
            self.draft.set("network.dora", False)
            self.show_draft_value("network.dora")

    def show_effective_batch(self) -> None:
        """Under GPUs (processes): the images each optimizer step trains."""
        row = self.query_one("#row-" + control_id("training.processes"), FormRow)
        if not row.display:
            return
        batch, processes = self.draft.get("training.batch_size", 1), self.draft.get("training.processes", 1)
        accumulation = self.draft.get("training.gradient_accumulation", 1)
        row.show_help(
            t("field.training.processes.help_effective", batch_size=batch, processes=processes, accumulation=accumulation, effective=effective_batch(batch, processes, accumulation))
        )

    def show_recommendations(self, rec) -> None:
        flux = self.condition_holds("flux")  # its batch size and checkpointing are the card's, not SD 1.x's fit
        batch_size, checkpointing = (1, True) if flux else (rec.batch_size, rec.gradient_checkpointing)
        lines = [
            t(
                "parameters.defaults_from_machine",
                device=rec.device_name,
                batch_size=batch_size,
                checkpointing=t("common.on") if checkpointing else t("common.off"),
            )
        ]
        if rec.processes > 1:
            lines.append(t("parameters.defaults_processes", processes=rec.processes, effective=rec.effective_batch))
        if flux:
            on_off = {True: t("common.on"), False: t("common.off")}
            card = self.flux_card
            lines.append(t("parameters.defaults_flux", resolution=card["dataset.resolution"], fp8=on_off[card["training.fp8_base"]],
                           offload=on_off[card["training.offload_blocks"]]))
        elif rec.family == "sdxl":
            resolution = rec.answers_defaults()["dataset.resolution"]
            lines.append(t("parameters.defaults_sdxl", resolution=resolution, optimizer=choice_label(SPECS["training.optimizer"], rec.optimizer)))
        self.query_one("#defaults-note", Static).update("\n".join(lines))
        precision_row = self.query_one("#row-" + control_id("training.mixed_precision"), FormRow)
        precision_row.show_help(t("field.training.mixed_precision.help_machine", precision=choice_label(SPECS["training.mixed_precision"], rec.mixed_precision)))

    def show_draft_value(self, key: str) -> None:
        """Show a value the app set in the draft (a machine default)."""
        if key not in SPECS:
            return
        widget = self.query_one("#" + control_id(key))
        value = self.draft.get(key)
        if isinstance(widget, Checkbox):
            widget.value = bool(value)
        elif isinstance(widget, Select):
            widget.value = value
        elif isinstance(widget, Input):
            widget.value = shown_value(value)

    def take(self, key: str, raw: Any) -> None:
        spec = SPECS[key]
        if key == "network.type":
            self.drop_other_types_settings(raw)
        row = self.query_one("#row-" + control_id(key), FormRow)
        value, error = accept(spec, raw, dict(self.draft.answers.get(spec.section, {})))
        if error is not None:
            self.invalid.add(key)
            row.show_error(error)
            return
        self.invalid.discard(key)
        row.show_error(None)
        if value != self.draft.get(key):
            self.draft.set(key, value)
            self.changed()
            if key in ("training.batch_size", "training.processes"):
                self.show_effective_batch()
            if key == "network.type":
                self.show_conditional_fields()
            elif key.startswith("network."):
                self.show_network_size()

    @on(Input.Changed)
    def input_changed(self, event: Input.Changed) -> None:
        key = key_of(event.input.id)
        if key in SPECS and (event.value.strip() != shown_value(self.draft.get(key)) or key in self.invalid):
            self.take(key, event.value)

    @on(Select.Changed)
    def select_changed(self, event: Select.Changed) -> None:
        key = key_of(event.select.id)
        if key in SPECS and event.value != self.draft.get(key):
            self.take(key, event.value)

    @on(Checkbox.Changed)
    def checkbox_changed(self, event: Checkbox.Changed) -> None:
        key = key_of(event.checkbox.id)
        if key in SPECS and event.value != self.draft.get(key):
            self.take(key, event.value)

    def ready_to_leave(self) -> bool:
        if not self.draft.get("output.name"):
            self.invalid.add("output.name")
            self.query_one("#row-" + control_id("output.name"), FormRow).show_error(t("invalid.required"))
        if self.invalid:
            names = ", ".join(SPECS[key].label for key in sorted(self.invalid, key=list(SPECS).index))
            self.show_screen_error(t("parameters.fix_fields", fields=names))
            first = sorted(self.invalid, key=list(SPECS).index)[0]
            self.query_one("#" + control_id(first)).focus()
            return False
        return True
