"""Rendering a recipe into NAME.yaml (commented config) and NAME.sh (launch script).

Both files are rendered fully in memory from the Jinja templates in ``templates/``; the caller
checks them and only then writes them (``write_files``: temp file + rename, never a half file).

The script's second line is the header of ``config.header``: one hash over the script's other lines
and the exact YAML bytes. ``launch.integrity`` renders the script again to check one on disk, so the
script depends on the recipe (and where it is written) alone.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tunecli import __version__
from tunecli.config.header import HEADER_PREFIX, stamp
from tunecli.config.paths import slurm_log

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"


# ---------------------------------------------------------------------------------------------
# Jinja environment


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))  # every value that reaches the shell
    env.filters["yaml_value"] = yaml_value
    env.filters["comment"] = comment_lines
    return env


def yaml_value(value: Any) -> str:
    """One value as inline YAML (flow style), e.g. 3, 1.0e-05, 'all-linear', [q_proj, v_proj], null."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    # safe_dump of a scalar ends with a document-end marker line
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def comment_lines(text: str, indent: int = 0, width: int = 100) -> str:
    pad = " " * indent
    wrapped = textwrap.wrap(text, width=width - indent - 2) or [""]
    return "\n".join(f"{pad}# {line}" for line in wrapped)


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass
class FieldRow:
    key: str
    value: str
    description: str


@dataclass
class SectionRows:
    name: str
    description: str
    fields: list[FieldRow]


def _section_rows(recipe: BaseModel) -> tuple[list[FieldRow], list[SectionRows]]:
    data = recipe.model_dump(mode="json")
    top: list[FieldRow] = []
    sections: list[SectionRows] = []
    for name, info in type(recipe).model_fields.items():
        value = getattr(recipe, name)
        if isinstance(value, BaseModel):
            rows = [
                FieldRow(k, yaml_value(data[name][k]), (f.description or "").strip())
                for k, f in type(value).model_fields.items()
            ]
            doc = (type(value).__doc__ or "").strip().splitlines()
            sections.append(SectionRows(name, info.description or (doc[0] if doc else ""), rows))
        else:
            top.append(FieldRow(name, yaml_value(data[name]), (info.description or "").strip()))
    return top, sections


@dataclass
class Rendered:
    name: str
    yaml_text: str
    script_text: str


_SECTION_TITLES = {
    "model": "The model and how it is trained (LoRA or full).",
    "data": "Prompts: where they come from and how long prompts and responses may be.",
    "reward": "How a completion is scored against the ground truth.",
    "algorithm": "Which critic-free algorithm computes the advantages.",
    "actor": "The policy update: optimizer, batch split, clipping, KL and entropy terms.",
    "rollout": "The engine that samples the GRPO groups.",
    "trainer": "Run length, checkpoints, validation, seed.",
    "launch": "Processes, machines and hardware (used by NAME.sh).",
}


def render_yaml(recipe: BaseModel, *, preset: str | None = None) -> str:
    top, sections = _section_rows(recipe)
    for s in sections:
        s.description = _SECTION_TITLES.get(s.name, s.description)
    return _env().get_template("recipe.yaml.j2").render(
        version=__version__, recipe_name=recipe.name, preset=preset, top=top, sections=sections
    )


def render_script(recipe: Any, yaml_text: str, *, yaml_abspath: str | None = None) -> str:
    """NAME.sh for the recipe; one process runs `tune train`, more go through torchrun."""
    launch = recipe.launch
    yaml_name = f"{recipe.name}.yaml"
    template = "launch.sbatch.j2" if launch.launcher == "slurm" else "launch.sh.j2"
    text = _env().get_template(template).render(
        header=HEADER_PREFIX,  # stamped below, once the rest of the script is known
        version=__version__,
        name=recipe.name,
        yaml_name=yaml_name,
        yaml_abspath=yaml_abspath or "",
        world_size=launch.world_size,
        nnodes=launch.nnodes,
        nproc_per_node=launch.n_gpus_per_node,
        rdzv_endpoint=launch.rdzv_endpoint,
        hardware=launch.hardware,
        slurm_log=slurm_log(recipe.name),
        model=recipe.model.path,
        summary=f"{recipe.algorithm.name} {recipe.model.method}, {recipe.rollout.name} rollouts, "
        f"{launch.nnodes} x {launch.n_gpus_per_node} {launch.hardware}",
    )
    return stamp(text, yaml_text.encode("utf-8"), yaml_name)


def render(recipe: Any, *, out_dir: str | Path | None = None, preset: str | None = None) -> Rendered:
    yaml_text = render_yaml(recipe, preset=preset)
    abspath = str((Path(out_dir) / f"{recipe.name}.yaml").resolve()) if out_dir is not None else None
    return Rendered(recipe.name, yaml_text, render_script(recipe, yaml_text, yaml_abspath=abspath))


def _temp_copy(path: Path, text: str, mode: int) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_script(path: Path, text: str) -> None:
    """Replace one script in place (temp file + rename): `tune validate --fix-hash` never leaves half a file."""
    tmp = _temp_copy(path, text, 0o755)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_files(rendered: Rendered, out_dir: str | Path) -> tuple[Path, Path]:
    """Write NAME.yaml and NAME.sh: both go to temp files first, then are renamed into place, so a
    failure never leaves a half file or a script whose hash names a YAML that was not written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yaml_path, sh_path = out / f"{rendered.name}.yaml", out / f"{rendered.name}.sh"
    temps: list[str] = []
    try:
        temps.append(_temp_copy(yaml_path, rendered.yaml_text, 0o644))
        temps.append(_temp_copy(sh_path, rendered.script_text, 0o755))
        os.replace(temps[0], yaml_path)
        os.replace(temps[1], sh_path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return yaml_path, sh_path
