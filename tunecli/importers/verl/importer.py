"""`tune new --from-verl SCRIPT.sh`: read a verl launch script as text and map it onto a recipe.

The script is never executed. A small shell reader follows what such scripts do: variables
(``nproc_per_gpu=128``), ``$((...))`` arithmetic, ``${VAR:-default}`` environment defaults, quotes,
``\\`` line continuations and comments; it then finds the ``python3 -m verl.trainer.main_ppo``
command and its Hydra ``key=value`` overrides. Each override is mapped onto our schema, or listed
as unmapped with the reason. Inconsistent sources (a variable used but never defined, a variable
written without its ``$``, arithmetic over something that is not a number) are errors with line
numbers.
"""

from __future__ import annotations

import ast
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecli.catalog import load_catalog
from tunecli.errors import TuneError, did_you_mean
from tunecli.authoring.defaults import Choices
from tunecli.authoring.render import yaml_value

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
# Environment variables a script may read without defining them; their values come from here.
KNOWN_ENV = ("HOME", "USER", "PWD", "PATH", "HOSTNAME", "TMPDIR")
ENTRY_POINTS = ("verl.trainer.main_ppo", "verl.trainer.main_grpo")


# ---------------------------------------------------------------------------------------------
# The shell reader


@dataclass
class Seg:
    """One piece of a shell word: literal text, $var / ${var...}, $((arith)), $(cmd), or $@."""

    kind: str  # "lit" | "var" | "arith" | "cmd" | "special"
    text: str
    pos: int


@dataclass
class Word:
    segs: list[Seg]
    pos: int

    @property
    def literal(self) -> str | None:
        """The word's text if it has no expansions."""
        return "".join(s.text for s in self.segs) if all(s.kind == "lit" for s in self.segs) else None


class Unknown(str):
    """A value only known when the script runs (command output): kept as its source text."""


class ShellError(Exception):
    def __init__(self, pos: int, message: str):
        super().__init__(message)
        self.pos = pos


def _matching(text: str, i: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one opened before ``i``."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'" and open_ == "(":
            j = text.find("'", i + 1)
            i = (j if j >= 0 else len(text)) + 1
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ShellError(i, f"unclosed '{open_}'")


def _dollar(text: str, i: int, segs: list[Seg]) -> int:
    """Parse the expansion starting at text[i] == '$'; append it; return the next index."""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if text.startswith("$((", i):
        end = _matching(text, i + 3, "(", ")")
        if end >= len(text) or text[end] != ")":
            raise ShellError(i, "unclosed '$((' arithmetic")
        segs.append(Seg("arith", text[i + 3 : end - 1], i))
        return end + 1
    if nxt == "(":
        end = _matching(text, i + 2, "(", ")")
        segs.append(Seg("cmd", text[i : end], i))
        return end
    if nxt == "{":
        end = _matching(text, i + 2, "{", "}")
        segs.append(Seg("var", text[i + 2 : end - 1], i))
        return end
    m = _NAME.match(text, i + 1)
    if m:
        segs.append(Seg("var", m.group(0), i))
        return m.end()
    if nxt and (nxt in "@*#?$!-" or nxt.isdigit()):
        segs.append(Seg("special", "$" + nxt, i))
        return i + 2
    segs.append(Seg("lit", "$", i))
    return i + 1


def parse_statements(text: str) -> list[list[Word]]:
    """Split a script into simple commands (lists of words), dropping comments and redirections."""
    statements: list[list[Word]] = []
    words: list[Word] = []
    segs: list[Seg] = []
    start = 0
    i, n = 0, len(text)
    in_word = False

    def lit(s: str, pos: int) -> None:
        if segs and segs[-1].kind == "lit":
            segs[-1].text += s
        else:
            segs.append(Seg("lit", s, pos))

    def end_word() -> None:
        nonlocal segs, in_word
        if in_word:
            words.append(Word(segs, start))
        segs, in_word = [], False

    def end_statement() -> None:
        nonlocal words
        end_word()
        if words:
            statements.append(words)
        words = []

    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] == "\n":  # line continuation
            i += 2
            continue
        if not in_word and c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c in " \t\r":
            end_word()
            i += 1
            continue
        if c in "\n;&|":
            end_statement()
            i += 1
            continue
        if c in "<>":
            # a redirection: drop a preceding fd number (2>&1) and the target word
            if in_word and all(s.kind == "lit" and s.text.isdigit() for s in segs):
                segs, in_word = [], False
            end_word()
            i += 1
            while i < n and text[i] in "<>&":
                i += 1
            while i < n and text[i] in " \t":
                i += 1
            while i < n and text[i] not in " \t\n;|&":
                i += 1
            continue
        if not in_word:
            in_word, start = True, i
        if c == "\\":
            lit(text[i + 1] if i + 1 < n else "", i)
            i += 2
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise ShellError(i, "unclosed single quote")
            lit(text[i + 1 : j], i)
            i = j + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise ShellError(start, "unclosed double quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        lit(text[i + 1], i)
                    i += 2
                elif c == "$":
                    i = _dollar(text, i, segs)
                elif c == "`":
                    j = text.find("`", i + 1)
                    segs.append(Seg("cmd", text[i : j + 1], i))
                    i = j + 1
                else:
                    lit(c, i)
                    i += 1
        elif c == "$":
            i = _dollar(text, i, segs)
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise ShellError(i, "unclosed backquote")
            segs.append(Seg("cmd", text[i : j + 1], i))
            i = j + 1
        else:
            lit(c, i)
            i += 1
    end_statement()
    return statements


_ARITH_OPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.Pow: operator.pow,
}


@dataclass
class Variable:
    value: str
    line: int


class Evaluator:
    """Expands words with the variables defined so far, recording problems with line numbers."""

    def __init__(self, text: str):
        self.text = text
        self.vars: dict[str, Variable] = {}
        self.errors: list[str] = []
        self.env_used: dict[str, str] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line(self, pos: int) -> int:
        lo, hi = 0, len(self._line_starts)
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if self._line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def error(self, pos: int, msg: str) -> None:
        self.errors.append(f"line {self.line(pos)}: {msg}")

    def lookup(self, name: str, pos: int) -> str | None:
        if name in self.vars:
            return self.vars[name].value
        if name in KNOWN_ENV:
            value = os.environ.get(name, "")
            self.env_used[name] = value
            return value
        hint = did_you_mean(name, list(self.vars))
        self.error(pos, f"${name} is used but never defined{hint}. Define it before this line, or give it a "
                        f"default: ${{{name}:-value}}.")
        return None

    def param(self, body: str, pos: int) -> str:
        """${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:=default}."""
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-=+])(.*))?", body, re.S)
        if not m:
            self.error(pos, f"${{{body}}} is a parameter expansion tune cannot read; use ${{NAME:-default}}.")
            return ""
        name, op, default = m.group(1), m.group(2), m.group(3)
        if op is None:
            return self.lookup(name, pos) or ""
        have = name in self.vars and (self.vars[name].value != "" or not op.startswith(":"))
        if op.endswith("+"):
            return self.expand_text(default, pos) if have else ""
        if have:
            return self.vars[name].value
        value = self.expand_text(default, pos)
        if op.endswith("="):
            self.vars[name] = Variable(value, self.line(pos))
        return value

    def expand_text(self, text: str, pos: int) -> str:
        """Expand a fragment (a default value) with quote removal, as the shell does."""
        try:
            stmts = parse_statements(text)
        except ShellError:
            return text
        return " ".join(self.word(w, base=pos) for stmt in stmts for w in stmt)

    def arith(self, expr: str, pos: int) -> str:
        def name_value(m: re.Match) -> str:
            name = m.group(1) or m.group(2) or m.group(3)
            value = self.lookup(name, pos)
            if value is None:
                raise ValueError
            if not re.fullmatch(r"\s*-?\d+\s*", value):
                where = f" (set on line {self.vars[name].line})" if name in self.vars else ""
                self.error(pos, f"${name} is {value!r}{where}, not a whole number, in $(({expr.strip()})). "
                                "Fix the assignment.")
                raise ValueError
            return f"({value.strip()})"

        try:
            py = re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)|\b([A-Za-z_]\w*)\b", name_value, expr)
        except ValueError:
            return "0"
        py = py.replace("/", "//").replace("////", "//")
        try:
            return str(_eval_int(ast.parse(py.strip(), mode="eval").body))
        except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
            self.error(pos, f"$(({expr.strip()})) is not integer arithmetic tune can evaluate.")
            return "0"

    def word(self, word: Word, base: int = 0) -> str:
        out = []
        unknown = False
        for s in word.segs:
            pos = base or s.pos
            if s.kind == "lit":
                out.append(s.text)
            elif s.kind == "var":
                value = self.param(s.text, pos)
                unknown = unknown or isinstance(value, Unknown)
                out.append(value)
            elif s.kind == "arith":
                out.append(self.arith(s.text, pos))
            elif s.kind == "cmd":
                out.append(s.text)
                unknown = True
            else:
                out.append(s.text)
        value = "".join(out)
        return Unknown(value) if unknown else value


def _eval_int(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
        return _ARITH_OPS[type(node.op)](_eval_int(node.left), _eval_int(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_int(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not integer arithmetic")


@dataclass
class Override:
    key: str
    value: str
    line: int
    raw: str | None  # the value as written when it has no expansions (for 'missing $' detection)


def read_overrides(text: str) -> tuple[list[Override], Evaluator]:
    """The main_ppo command's key=value overrides, with variables expanded in script order."""
    ev = Evaluator(text)
    try:
        statements = parse_statements(text)
    except ShellError as e:
        raise TuneError(f"line {ev.line(e.pos)}: {e}. Fix the script's quoting.", field="--from-verl") from None
    overrides: list[Override] = []
    found = False
    for words in statements:
        k = 0
        if words[0].literal in ("export", "local", "declare", "readonly"):
            k = 1
        assignments = []
        while k < len(words):
            lit0 = words[k].segs[0].text if words[k].segs and words[k].segs[0].kind == "lit" else ""
            m = _ASSIGN.match(lit0)
            if not m:
                break
            assignments.append((m.group(1), words[k], len(m.group(1)) + 1))
            k += 1
        command = words[k:]
        if not command or words[0].literal == "export":
            for name, w, cut in assignments:  # persistent assignments
                first = Seg("lit", w.segs[0].text[cut:], w.segs[0].pos + cut)
                value = ev.word(Word([first, *w.segs[1:]], w.pos))
                ev.vars[name] = Variable(value, ev.line(w.pos))
            continue
        texts = [w.literal or "" for w in command]
        if texts[0] == ":":  # `: "${VAR:=default}"` only exists to set defaults
            for w in command[1:]:
                ev.word(w)
            continue
        if not any(t in ENTRY_POINTS or t.endswith("main_ppo") for t in texts):
            continue
        found = True
        start = next(i for i, t in enumerate(texts) if t in ENTRY_POINTS or t.endswith("main_ppo")) + 1
        for w in command[start:]:
            if w.segs and w.segs[0].kind == "special":
                continue  # "$@": the caller's extra overrides
            head = w.segs[0].text if w.segs and w.segs[0].kind == "lit" else ""
            if "=" not in head:
                value = ev.word(w)
                if value.strip():
                    ev.error(w.pos, f"'{value}' after the main_ppo command is not a key=value override.")
                continue
            key, _, rest = head.partition("=")
            first = Seg("lit", rest, w.segs[0].pos + len(key) + 1)
            value = ev.word(Word([first, *w.segs[1:]], w.pos))
            literal = all(seg.kind == "lit" for seg in w.segs)
            overrides.append(Override(key.lstrip("+~"), value, ev.line(w.pos), rest if literal else None))
    if not found:
        raise TuneError(
            "The script has no `python3 -m verl.trainer.main_ppo ...` command, so there is nothing to import. "
            "Pass a verl launch script (e.g. one of verl's examples/tuning/*.sh).",
            field="--from-verl",
        )
    return overrides, ev


# ---------------------------------------------------------------------------------------------
# Mapping verl keys onto the recipe

AR = "actor_rollout_ref."

# verl's defaults (ppo_trainer.yaml) where they differ from ours and matter: applied before the
# script's overrides, so that a key the script leaves out means what it means in verl.
VERL_DEFAULTS = {
    "rollout.n": 1,
    "actor.use_kl_loss": False,
    "actor.entropy_coeff": 0.0,
    "actor.param_offload": False,
    "actor.optimizer_offload": False,
    "rollout.gpu_memory_utilization": 0.5,
    "rollout.enable_sleep_mode": True,  # verl frees the engine's cache while training (free_cache_engine)
    "model.enable_gradient_checkpointing": False,
    "data.shuffle": True,
    "trainer.save_freq": -1,
    "trainer.test_freq": -1,
}

# verl key -> our dotted key (same meaning, value copied)
DIRECT = {
    "data.train_batch_size": "data.train_batch_size",
    "data.max_prompt_length": "data.max_prompt_length",
    "data.max_response_length": "data.max_response_length",
    "data.filter_overlong_prompts": "data.filter_overlong_prompts",
    "data.shuffle": "data.shuffle",
    "data.prompt_key": "data.prompt_key",
    "data.seed": "trainer.seed",
    "algorithm.norm_adv_by_std_in_grpo": "algorithm.norm_adv_by_std_in_grpo",
    "algorithm.filter_groups.enable": "algorithm.filter_groups",
    AR + "model.lora_rank": "model.lora_rank",
    AR + "model.lora_alpha": "model.lora_alpha",
    AR + "model.target_modules": "model.target_modules",
    AR + "model.enable_gradient_checkpointing": "model.enable_gradient_checkpointing",
    AR + "model.trust_remote_code": "model.trust_remote_code",
    AR + "actor.optim.lr": "actor.lr",
    AR + "actor.optim.weight_decay": "actor.weight_decay",
    AR + "actor.optim.lr_warmup_steps": "actor.lr_warmup_steps",
    AR + "actor.ppo_mini_batch_size": "actor.ppo_mini_batch_size",
    AR + "actor.ppo_micro_batch_size_per_gpu": "actor.ppo_micro_batch_size_per_gpu",
    AR + "actor.ppo_epochs": "actor.ppo_epochs",
    AR + "actor.use_kl_loss": "actor.use_kl_loss",
    AR + "actor.kl_loss_coef": "actor.kl_loss_coef",
    AR + "actor.kl_loss_type": "actor.kl_loss_type",
    AR + "actor.entropy_coeff": "actor.entropy_coeff",
    AR + "actor.clip_ratio_low": "actor.clip_ratio_low",
    AR + "actor.clip_ratio_high": "actor.clip_ratio_high",
    AR + "actor.clip_ratio_c": "actor.clip_ratio_c",
    AR + "actor.loss_agg_mode": "actor.loss_agg_mode",
    AR + "actor.grad_clip": "actor.grad_clip",
    AR + "actor.fsdp_config.param_offload": "actor.param_offload",
    AR + "actor.fsdp_config.optimizer_offload": "actor.optimizer_offload",
    AR + "rollout.n": "rollout.n",
    AR + "rollout.temperature": "rollout.temperature",
    AR + "rollout.top_p": "rollout.top_p",
    AR + "rollout.top_k": "rollout.top_k",
    AR + "rollout.gpu_memory_utilization": "rollout.gpu_memory_utilization",
    AR + "rollout.tensor_model_parallel_size": "rollout.tensor_model_parallel_size",
    AR + "rollout.max_model_len": "rollout.max_model_len",
    AR + "rollout.max_num_seqs": "rollout.max_num_seqs",
    AR + "rollout.max_num_batched_tokens": "rollout.max_num_batched_tokens",
    AR + "rollout.enforce_eager": "rollout.enforce_eager",
    AR + "rollout.free_cache_engine": "rollout.enable_sleep_mode",
    AR + "rollout.enable_sleep_mode": "rollout.enable_sleep_mode",
    AR + "rollout.dtype": "rollout.dtype",
    "trainer.total_epochs": "trainer.total_epochs",
    "trainer.total_training_steps": "trainer.total_training_steps",
    "trainer.save_freq": "trainer.save_freq",
    "trainer.test_freq": "trainer.test_freq",
    "trainer.val_before_train": "trainer.val_before_train",
    "trainer.project_name": "trainer.project_name",
    "trainer.default_local_dir": "trainer.default_local_dir",
    "trainer.seed": "trainer.seed",
}

# verl key (or prefix ending in '.') -> why it has no meaning here / what we do instead
UNMAPPED_REASONS = {
    "data.val_batch_size": "validation runs over data.val_size prompts in engine-sized batches",
    "data.truncation": "over-long prompts are dropped (data.filter_overlong_prompts) or refused, never cut",
    "data.return_raw_chat": "prompts always go through the model's chat template",
    "data.dataloader_num_workers": "prompts are loaded in the trainer process",
    "algorithm.kl_ctrl.": "KL is applied as a loss term (actor.kl_loss_coef), never inside the reward",
    AR + "model.use_remove_padding": "padding is handled inside the trainer",
    AR + "model.use_shm": "the model is loaded from its directory or the cache; no /dev/shm copy",
    AR + "model.use_fused_kernels": "plain PyTorch kernels; no fused-kernel switch",
    AR + "actor.fsdp_config.fsdp_size": "FSDP2 shards over all processes",
    AR + "actor.fsdp_config.": "FSDP2 settings other than offload are chosen by the trainer",
    AR + "actor.ulysses_sequence_parallel_size": "no sequence parallelism; the memory estimate assumes none "
                                                 "(lower actor.ppo_micro_batch_size_per_gpu if it does not fit)",
    AR + "actor.optim.": "AdamW with actor.lr, actor.weight_decay, actor.lr_warmup_steps, actor.lr_scheduler_type",
    AR + "actor.checkpoint.": "checkpoints always hold what resuming needs",
    AR + "actor.use_torch_compile": "eager PyTorch",
    AR + "ref.": "the reference policy shares the actor's settings (LoRA: the base model with the adapter off)",
    AR + "rollout.log_prob_micro_batch_size": "log-probs are computed in actor.ppo_micro_batch_size_per_gpu chunks",
    AR + "rollout.log_prob_": "log-probs are computed in actor.ppo_micro_batch_size_per_gpu chunks",
    AR + "rollout.enable_chunked_prefill": "vLLM's scheduler decides (chunked prefill is on in vLLM V1)",
    AR + "rollout.load_format": "weights go to the engine from memory at every step, not from a file",
    AR + "rollout.layered_summon": "the adapter is merged and synced layer by layer by the engine module",
    AR + "rollout.mode": "rollouts are synchronous and colocated",
    AR + "rollout.val_kwargs.": "validation uses greedy decoding",
    AR + "rollout.engine_kwargs.": "engine options beyond the rollout.* fields are not exposed",
    AR + "rollout.": "no tunecli equivalent for this engine option",
    AR + "hybrid_engine": "the engine is always colocated with the trainer",
    "critic.": "GRPO-family algorithms have no critic",
    "reward_model.": "rewards are Python functions (reward.function), not reward models",
    "trainer.logger": "metrics go to the console and the run directory; wandb is not bundled",
    "trainer.experiment_name": "the recipe name names the run (--name)",
    "trainer.critic_warmup": "no critic",
    "trainer.default_hdfs_dir": "checkpoints stay in trainer.default_local_dir",
    "trainer.resume_mode": "a run resumes from its latest checkpoint (trainer.resume)",
    "trainer.validation_data_dir": "validation results are logged with the metrics",
    "trainer.rollout_data_dir": "rollouts are not dumped to disk",
    "trainer.balance_batch": "batches are split evenly by count",
    "trainer.device": "the device follows launch.hardware",
    "ray_init.": "no Ray: processes are started by torchrun",
    "--config-path": "Hydra config files are not read; only the overrides on the command line are imported",
    "--config-name": "Hydra config files are not read; only the overrides on the command line are imported",
    "hydra.": "Hydra's own settings have no meaning here",
}


@dataclass
class Unmapped:
    key: str
    value: str
    reason: str
    line: int


@dataclass
class VerlImport:
    choices: Choices
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _reason_for(key: str) -> str:
    if key in UNMAPPED_REASONS:
        return UNMAPPED_REASONS[key]
    prefixes = [p for p in UNMAPPED_REASONS if p.endswith((".", "_")) and key.startswith(p)]
    if prefixes:
        return UNMAPPED_REASONS[max(prefixes, key=len)]
    return "no tunecli equivalent"


def _as_bool(value: str) -> bool | None:
    low = value.strip().lower()
    return True if low in ("true", "1", "yes", "on") else False if low in ("false", "0", "no", "off") else None


def _file_list(value: str) -> list[str]:
    """verl accepts one path or a Hydra list "['a.parquet', 'b.parquet']"."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        return [p.strip().strip("'\"") for p in v[1:-1].split(",") if p.strip()]
    return [v]


def _set(sets: dict[str, str], key: str, value: Any) -> None:
    # Strings stay as written: `--set` reads them like Hydra does (3e-5 -> float, True -> bool).
    sets[key] = value if isinstance(value, str) else yaml_value(value)


def _numeric_field(dotted: str) -> bool:
    from tunecli.config.schema import Recipe

    section, leaf = dotted.split(".")
    ann = str(Recipe.model_fields[section].annotation.model_fields[leaf].annotation)
    return any(t in ann for t in ("int", "float", "bool"))


def import_verl_script(path: str | Path) -> VerlImport:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TuneError(f"--from-verl '{path}' cannot be read ({e.strerror}). Give the path of a verl launch script.",
                        field="--from-verl") from None
    overrides, ev = read_overrides(text)
    cat = load_catalog()
    result = VerlImport(Choices(strategy="fsdp2", engine="vllm"))
    c = result.choices
    sets: dict[str, str] = {k: yaml_value(v) for k, v in VERL_DEFAULTS.items()}
    unmapped, notes = result.unmapped, result.notes
    seen: dict[str, Override] = {}
    for o in overrides:
        seen[o.key] = o  # Hydra: the last occurrence wins

    def skip(o: Override, reason: str) -> None:
        unmapped.append(Unmapped(o.key, o.value, reason, o.line))

    world_keys = {}
    global_micro: Override | None = None
    dynamic: dict[str, Override] = {}
    reward_fn: dict[str, str] = {}
    for key, o in seen.items():
        value = o.value
        if isinstance(value, Unknown):
            skip(o, "the value comes from a command the script runs; tune never runs it")
            continue
        if key in DIRECT or key in ("trainer.n_gpus_per_node", "trainer.nnodes", AR + "actor.ppo_micro_batch_size"):
            if o.raw is not None and o.raw in ev.vars and (key not in DIRECT or _numeric_field(DIRECT[key])):
                ev.errors.append(f"line {o.line}: {key}={o.raw} uses the shell variable '{o.raw}' without its '$' "
                                 f"(write {key}=${{{o.raw}}}).")
                continue
        if key in DIRECT:
            target = DIRECT[key]
            if target == "model.target_modules" and value.strip().startswith("["):
                _set(sets, target, _file_list(value))
            else:
                _set(sets, target, value)
        elif key == "algorithm.adv_estimator":
            if value in ("grpo", "rloo"):
                c.algorithm = value
            elif value in ("drgrpo", "dr_grpo"):
                c.algorithm = "dr_grpo"
            else:
                ev.errors.append(f"line {o.line}: algorithm.adv_estimator={value} needs a critic or is not in "
                                 "tunecli's critic-free set; use grpo, rloo or dr_grpo.")
        elif key == "algorithm.use_kl_in_reward":
            skip(o, "same as tunecli: KL is a loss term only" if _as_bool(value) is False
                 else "KL in the reward is not supported; use actor.use_kl_loss=true instead")
        elif key in ("data.train_files", "data.val_files"):
            files = _file_list(value)
            _set(sets, key, files[0])
            if len(files) > 1:
                skip(o, f"tunecli reads one file per split; kept {files[0]}")
        elif key == AR + "model.path":
            model = value
            entry = cat.model_by_path(model) or (None if Path(model).expanduser().exists() else cat.model_by_basename(model))
            if entry is not None and model not in (entry.hf_id, entry.name):
                notes.append(f"line {o.line}: model '{model}' is the catalogue's {entry.hf_id}; using the hub id "
                             f"(keep your copy with --set model.path={model}).")
                model = entry.hf_id or entry.name
            c.model = model
        elif key == AR + "actor.ppo_micro_batch_size":
            global_micro = o
        elif key in (AR + "actor.use_dynamic_bsz", AR + "actor.ppo_max_token_len_per_gpu"):
            dynamic[key] = o
        elif key == AR + "actor.clip_ratio":
            _set(sets, "actor.clip_ratio_low", value)
            _set(sets, "actor.clip_ratio_high", value)
        elif key == AR + "actor.strategy":
            if value not in ("fsdp", "fsdp2"):
                notes.append(f"line {o.line}: actor.strategy={value} is trained with FSDP2 here.")
            skip(o, "tunecli trains with FSDP2 (launch.strategy)")
        elif key == AR + "rollout.name":
            if value not in ("vllm", "hf"):
                skip(o, f"engine '{value}' is not bundled; using vllm")
            else:
                c.engine = value
        elif key in ("trainer.n_gpus_per_node", "trainer.nnodes"):
            world_keys[key] = o
        elif key in ("custom_reward_function.path", "custom_reward_function.name"):
            reward_fn[key.rsplit(".", 1)[1]] = value
        elif key.startswith("custom_reward_function."):
            skip(o, "reward keyword arguments go in reward.kwargs")
        else:
            skip(o, _reason_for(key))

    # Values that depend on others: processes, micro-batches, dynamic batch size, dataset, reward.
    def int_of(o: Override | None, default: int) -> int:
        if o is None:
            return default
        try:
            return int(o.value)
        except ValueError:
            ev.errors.append(f"line {o.line}: {o.key}={o.value} is not a whole number.")
            return default

    c.gpus = int_of(world_keys.get("trainer.n_gpus_per_node"), 1)
    c.nodes = int_of(world_keys.get("trainer.nnodes"), 1)
    world = c.gpus * c.nodes
    if global_micro is not None and AR + "actor.ppo_micro_batch_size_per_gpu" not in seen:
        per_gpu = max(1, int_of(global_micro, world) // world)
        sets["actor.ppo_micro_batch_size_per_gpu"] = str(per_gpu)
        unmapped.append(Unmapped(global_micro.key, global_micro.value, f"deprecated in verl (global count): "
                                 f"{global_micro.value} / {world} GPUs = actor.ppo_micro_batch_size_per_gpu {per_gpu}",
                                 global_micro.line))
    use_dynamic = dynamic.get(AR + "actor.use_dynamic_bsz")
    max_tokens = dynamic.get(AR + "actor.ppo_max_token_len_per_gpu")
    if use_dynamic is not None and _as_bool(use_dynamic.value):
        if max_tokens is None:
            sets["actor.ppo_max_token_len_per_gpu"] = "16384"  # verl's default
            notes.append(f"line {use_dynamic.line}: use_dynamic_bsz without ppo_max_token_len_per_gpu: verl's "
                         "default 16384 tokens per GPU.")
        else:
            _set(sets, "actor.ppo_max_token_len_per_gpu", max_tokens.value)
    elif max_tokens is not None:
        skip(max_tokens, "only used with use_dynamic_bsz=True")
    if use_dynamic is not None:
        skip(use_dynamic, "a token budget is on when actor.ppo_max_token_len_per_gpu is set")

    rank = sets.get("model.lora_rank")
    c.method = "lora" if rank not in (None, "0") else "full"
    if c.method == "full":
        sets.pop("model.lora_rank", None)
    train = sets.get("data.train_files", "")
    c.dataset = "gsm8k" if "gsm8k" in train.lower() else (train or None)
    if reward_fn:
        if "path" not in reward_fn:
            ev.errors.append("custom_reward_function.name is set without custom_reward_function.path.")
        else:
            c.reward = f"{reward_fn['path']}:{reward_fn.get('name', 'compute_score')}"
    elif c.dataset == "gsm8k":
        c.reward = "gsm8k"
    elif train:
        c.reward = "gsm8k_flexible"
        notes.append("The data is not GSM8K and the script names no custom_reward_function: using the "
                     "gsm8k_flexible reward (last number); change it with --reward.")

    # The GPU type is not part of a verl script; its file name usually says (naming rule).
    tokens = re.split(r"[_.]", path.stem.lower())
    hardware = [t for t in tokens if t in cat.names("hardware")]
    if hardware:
        c.gpu_type = hardware[0]
    else:
        c.gpu_type = "h100"
        notes.append("The GPU type is not in the script or its name: assuming h100 (use --gpu-type).")
    if ev.env_used:
        notes.append("Environment values used: " + ", ".join(f"${k}={v}" for k, v in ev.env_used.items()) + ".")
    if ev.errors:
        raise TuneError(
            f"{path.name} has {len(ev.errors)} problem(s) that make its values ambiguous: " + " ".join(ev.errors)
            + " Fix the script and import it again.",
            field="--from-verl",
        )
    c.sets = [f"{k}={v}" for k, v in sets.items()]
    unmapped.sort(key=lambda u: u.line)
    return result
