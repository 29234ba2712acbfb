"""The import graph of engine/ and tui_lora/, read from the source. Every import counts: at module
level, inside a function, or under `if TYPE_CHECKING:` (as ../shared/tools/import_cycles.py counts
them). test_import_hygiene.py checks the same layering at run time, on the paths its scripts take;
this test covers every function, including the ones no test calls.

The contracts, as harlequin's import-linter contracts, each exception listed with its reason:
1. No import cycles, not even through a function-level import.
2. engine never imports tui_lora.
3. Light modules (LIGHT: what the command line and the wizard import before training starts)
   import no heavy library and no heavy engine module, not even inside a function. The exceptions
   are the deferrals where light code calls heavy code (LIGHT_DEFERRALS), each with its reason.
4. tui_lora imports no heavy library and no heavy engine module at module level; inside a function
   it calls heavy engine code only at the deferrals listed in TUI_DEFERRALS. (Imports under
   TYPE_CHECKING, for annotations, never run: they count for cycles only.)
A listed exception that the code no longer needs fails the test too, so the lists stay true.
"""

from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "tui_lora")
HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")

# Light: no torch behind them. A module a light module imports must be light too (or a deferral).
LIGHT = {
    "engine",
    "engine.autotag",
    "engine.buckets",
    "engine.caption_files",
    "engine.checks",
    "engine.checks.costs",
    "engine.checks.dataset",
    "engine.checks.dataset_findings",
    "engine.checks.dataset_walk",
    "engine.checks.defaults",
    "engine.checks.environment",
    "engine.checks.estimate",
    "engine.checks.items",
    "engine.checks.machine_items",
    "engine.checks.recommend",
    "engine.checks.report",
    "engine.checks.run_items",
    "engine.checks.tokens",
    "engine.config",
    "engine.controls",
    "engine.cpu_threads",
    "engine.dataset",
    "engine.dataset_prepare",
    "engine.errors",
    "engine.events",
    "engine.files",
    "engine.messages",
    "engine.network.types",
    "engine.lora_tags",
    "engine.parking",
    "engine.launch",
    "engine.plan",
    "engine.png_files",
    "engine.prompts",
    "engine.run_folder",
    "engine.samplers",
    "engine.tagger",
}

# (light module, what it imports inside a function): why the heavy import is deferred there.
LIGHT_DEFERRALS: dict[tuple[str, str], str] = {
    ("engine.checks.environment", "torch"): "read_torch: torch's build and whether CUDA works are facts the check reports",
    ("engine.checks.tokens", "transformers"): "load_model_tokenizer: the dataset check reads the model's CLIP tokenizer when given a model",
    ("engine.checks.tokens", "engine.families"): "load_model_tokenizer: finds the model's tokenizer folder and family",
    ("engine.checks.tokens", "engine.families.registry"): "load_model_tokenizer: the family's default resolution",
    ("engine.checks.run_items", "engine.families"): "the run's base-model item inspects the model's files",
    ("engine.plan", "engine.families"): "prepare_plan inspects the base model before training loads it",
    ("engine.plan", "engine.families.registry"): "prepare_plan: the family's label and default resolution",
    ("engine.plan", "engine.families.vae"): "prepare_plan checks `[model] vae` before training loads it",
    ("engine.plan", "engine.tensorboard"): "prepare_plan checks that tensorboard is installed when asked for",
    ("engine.plan", "engine.families.flux"): "prepare_plan checks FLUX.1's files and settings before training loads them",
    ("engine.checks.run_items", "engine.families.flux"): "the base-model item inspects a FLUX.1 model with the answers' files",
    ("engine.launch", "engine.train"): "execute_run: the engine process trains; launching and following a run need no torch",
    ("engine.cpu_threads", "torch"): "use_threads applies the thread count to torch when training starts; the rest counts cores",
}

# (tui_lora module, engine module it imports inside a function): the heavy work that command or screen starts.
TUI_DEFERRALS: dict[tuple[str, str], str] = {
    ("tui_lora.screens.model", "engine.families.flux"): "a FLUX.1 transformer's three other files are checked as typed",
    ("tui_lora.screens.model", "engine.families.flux_files"): "reads a FLUX.1 file's header to name what it is",
    ("tui_lora.screens.model", "engine.families"): "inspects the chosen base model",
    ("tui_lora.screens.model", "engine.families.vae"): "checks the chosen VAE file",
    ("tui_lora.commands.demo", "engine.demo"): "`demo`: builds the tiny demo model",
    ("tui_lora.commands.resume", "engine.checkpoint"): "`resume`: reads the checkpoint to resume from",
    ("tui_lora.commands.reg", "engine.reg_images"): "`reg generate`: counts and makes regularization images with the base model",
    ("tui_lora.commands.generate", "engine.generate"): "`generate`: makes images with the base model and LoRAs",
    ("tui_lora.commands.base_model", "engine.image_maker"): "loads the base model for `generate` and `reg generate`",
    ("tui_lora.commands.base_model", "engine.families.flux"): "a FLUX.1 base model loads with the answers' ae, clip_l and t5xxl files",
    ("tui_lora.screens.parameters", "engine.network.adapters"): "the file size of each network type, counted on the model's shape",
    ("tui_lora.screens.parameters", "engine.network.size"): "the file size of each network type, counted on the model's shape",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "engine.plan"
    target: str  # the imported module: one of ours ("engine.config") or a library's top name ("torch")
    line: int
    where: str  # "module", "function" or "type_checking"


def our_modules(root: Path = REPO) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def read_imports(root: Path = REPO) -> list[Import]:
    """Every import statement of our modules, resolved to the module it names."""
    modules = our_modules(root)

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = []
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node, where in _walk(ast.parse(path.read_text(encoding="utf-8")), "module"):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif node.level:  # relative: from .x import y
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{base}.{alias.name}" for alias in node.names]
            else:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                target = resolve(name) or name.split(".")[0]
                if target != module:
                    found.append(Import(module, target, node.lineno, where))
    return found


def _walk(node: ast.AST, where: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, where
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, "function")
        elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), "type_checking")
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), where)
        else:
            yield from _walk(child, where)


def is_ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def is_heavy(target: str) -> bool:
    """A heavy library, or one of our modules outside LIGHT (engine's heavy side; tui_lora's app)."""
    return target.split(".")[0] in HEAVY_LIBRARIES or (target.startswith("engine") and target not in LIGHT)


def cycles(imports: list[Import]) -> list[str]:
    """Each set of modules that import one another (a strongly connected component), with one
    cycle through it as `module:line imports module` steps."""
    graph: dict[str, set[str]] = {}
    lines = {}
    for imp in imports:
        if is_ours(imp.target):
            graph.setdefault(imp.module, set()).add(imp.target)
            graph.setdefault(imp.target, set())
            lines.setdefault((imp.module, imp.target), imp.line)
    found = []
    for component in _components(graph):
        inside = {module: graph[module] & component for module in component}
        try:
            graphlib.TopologicalSorter(inside).prepare()
        except graphlib.CycleError as error:
            path = error.args[1]  # [a, b, ..., a]: each module imports the one before it
            steps = "; ".join(f"{path[i + 1]}:{lines[(path[i + 1], path[i])]} imports {path[i]}" for i in range(len(path) - 1))
            found.append(f"{' '.join(sorted(component))} (e.g. {steps})")
    return found


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while module not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def light_violations(imports: list[Import]) -> list[str]:
    return _unique([
        f"{imp.module}:{imp.line} imports {imp.target} ({imp.where} level)"
        for imp in imports
        if imp.module in LIGHT
        and is_heavy(imp.target)
        and not (imp.where == "function" and (imp.module, imp.target) in LIGHT_DEFERRALS)
    ])


def tui_violations(imports: list[Import]) -> list[str]:
    return _unique([
        f"{imp.module}:{imp.line} imports {imp.target} ({imp.where} level)"
        for imp in imports
        if imp.module.startswith("tui_lora")
        and imp.where != "type_checking"  # annotations only: never run
        and is_heavy(imp.target)
        and not (imp.where == "function" and (imp.module, imp.target) in TUI_DEFERRALS)
    ])


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def test_the_import_graph_has_no_cycles():
    assert cycles(read_imports()) == []


def test_engine_never_imports_tui_lora():
    assert [f"{i.module}:{i.line}" for i in read_imports() if i.module.startswith("engine") and i.target.startswith("tui_lora")] == []


def test_light_modules_import_nothing_heavy_outside_the_listed_deferrals():
    assert light_violations(read_imports()) == []


def test_tui_lora_imports_heavy_code_only_inside_functions_at_the_listed_deferrals():
    assert tui_violations(read_imports()) == []


def test_every_listed_module_and_deferral_is_still_true():
    """An exception the code no longer takes is removed from the lists (as import-linter reports
    unmatched ignores); a light module that was renamed or removed is taken off LIGHT."""
    imports = read_imports()
    taken = {(i.module, i.target) for i in imports if i.where == "function"}
    assert sorted(set(LIGHT_DEFERRALS) - taken) == []
    assert sorted(set(TUI_DEFERRALS) - taken) == []
    assert sorted(LIGHT - set(our_modules())) == []


def test_an_added_cycle_fails(tmp_path):
    """The test can fail: a copy of the packages where engine.errors calls into engine.config
    (which imports engine.errors at the top) has a cycle."""
    import shutil

    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package)
    errors = tmp_path / "engine" / "errors.py"
    errors.write_text(errors.read_text(encoding="utf-8") + "\n\ndef _late():\n    from engine.config import Answers\n", encoding="utf-8")
    found = cycles(read_imports(tmp_path))
    assert len(found) == 1 and "engine.errors" in found[0] and "engine.config" in found[0], found
