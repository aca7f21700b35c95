"""Typed run configuration: YAML files hold deltas from these defaults, ``--set a.b=value`` overrides them.

Keys are a stable contract (docs/configuration.md): task.*, model.*, optim.*, train.*, tracking.*. An unknown
key, a value of the wrong type or out of range is refused with one line naming the key and what it accepts. Task
options (task.length, task.bptt, ...) and cell options (model.beta, ...) are validated by the task and cell
registries themselves, so a new task or cell brings its options without touching this file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .registry import SuiteError, did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "warmup")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "bf16-mixed")
INITS = ("orthogonal", "uniform")
SWEEPS_DIR = Path(__file__).parent / "sweeps"  # shipped sweep files (the checkout's top-level sweeps/ links here)


@dataclass
class TaskConfig:
    name: str = "adding"  # a registered task (rnnsuite list tasks); its options live in `options`
    options: dict[str, Any] = field(default_factory=dict)  # task.length, task.batch_size, task.bptt, task.path...


@dataclass
class ModelConfig:
    cell: str = "gru"  # a registered cell (rnnsuite list cells)
    hidden_size: int = 128  # the size the reference's measured yardsticks use
    layers: int = 1  # stacked recurrent layers; the synthetic tasks need one
    dropout: float = 0.0  # between layers, on the embedding and before the head (Zaremba et al. 2014)
    chrono_init: Any = False  # false, true (T_max = the task's sequence length) or an integer T_max
    init: str = "orthogonal"  # orthogonal recurrent / Xavier input weights; "uniform" = U(-init_range, init_range)
    init_range: float = 0.1  # Zaremba et al. 2014 used U(-0.1, 0.1)
    embedding_size: int = 0  # LM embedding width; 0 = hidden_size (needed for weight tying)
    tie_weights: bool = False  # LM: share embedding and softmax weights (Press & Wolf 2017)
    bidirectional: bool = False  # a second cell per layer reads the sequence reversed; tasks with a readout only
    cell_options: dict[str, Any] = field(default_factory=dict)  # model.<cell option>, e.g. model.beta (janet)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam, adamw, sgd, rmsprop
    lr: float = 3e-3  # docs/tasks.md: 1e-3 is too small for short budgets on copy/adding; tuned by sweeps anyway
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd / rmsprop only
    clip: float = 1.0  # global-norm clipping threshold (Pascanu et al. 2013); 0 disables clipping
    schedule: str = "constant"  # constant, step (Zaremba decay), cosine, warmup (linear warm-up, then constant)
    warmup_steps: int = 0  # linear warm-up length for "warmup" and "cosine"
    decay_start: int = 4  # "step": lr is multiplied by decay_factor each unit after this many (Zaremba: epoch 4)
    decay_factor: float = 0.5  # "step": Zaremba et al. 2014 halved the rate
    decay_unit: str = "epoch"  # "step" schedule counts epochs (LM) or steps (synthetic tasks have no epochs)


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps; ignored when epochs is set
    epochs: int = 0  # full passes over an LM corpus; 0 = train for `steps`
    seed: int = 0
    device: str = "auto"  # auto = cuda when available
    precision: str = "32"  # "bf16-mixed" on GPUs
    log_every: int = 50  # steps between metric flushes: MLflow calls cost ~50 ms on a shared SQLite file
    val_every: int = 250  # steps between validations (LM: also at each epoch end)
    diag_every: int = 250  # steps between gate and gradient-profile diagnostics (0 = start and end only)
    grad_every: int = 50  # steps between per-gate gradient norms
    diag_batch: int = 64  # sequences in the fixed diagnostic batch
    checkpoint_dir: str = ""  # "" = <runs dir>/checkpoints
    deterministic: bool = False  # torch deterministic algorithms (slower; bit-reproducible on one device)
    progress: bool = True  # Lightning's progress bar
    threads: int = 1  # CPU intra-op threads; 0 = torch's default. Recurrent steps are small ops: on the 2-core
    # machines measured here 2 threads made nn.GRU 100x slower than 1; run one sweep worker per core instead


@dataclass
class TrackingConfig:
    uri: str = ""  # "" = sqlite:///rnnsuite-runs/mlflow.db (never MLflow's refused file store)
    experiment: str = "rnnsuite"
    run_name: str = ""


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict in the YAML form: task/model options appear as ordinary keys."""
        out = dataclasses.asdict(self)
        out["task"] = {"name": self.task.name, **self.task.options}
        model = out["model"]
        model.update(model.pop("cell_options"))
        return out

    def flat(self) -> dict[str, Any]:
        """Dotted keys (task.length, optim.lr, ...) as logged to MLflow."""
        return {f"{section}.{k}": v for section, values in self.to_dict().items() for k, v in values.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {"task": TaskConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "tracking": TrackingConfig}
EXTRA = {"task": "options", "model": "cell_options"}  # sections whose unknown keys go to a free dict


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (a run config, a task setting, a sweep file); a missing, unreadable or malformed file
    is one clear SuiteError, worded the same whichever kind of file it is."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"cannot read {str(p)!r}: it does not exist") from None
    except IsADirectoryError:
        raise SuiteError(f"cannot read {str(p)!r}: it is a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"cannot read {str(p)!r}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
                         f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise SuiteError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SuiteError(f"malformed YAML in {str(p)!r}{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # PyYAML: "2001-13-01" is a bad date
        raise SuiteError(f"malformed YAML in {str(p)!r}: {' '.join(str(exc).split())[:200]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SuiteError(f"{str(p)!r} must hold a mapping of sections (task:, model:, ...), "
                         f"not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value) with the value read as YAML (so 1e-3, true, [1, 2] keep their types)."""
    if "=" not in text:
        raise SuiteError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)  # 1e-3: a number to a user, a string to YAML 1.1
        except ValueError:
            pass
    return key, value


def build_config(*layers: dict[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """Merge mappings (later wins) and dotted overrides into a validated RunConfig."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in (layer or {}).items():
            if section == "description":
                continue
            if section not in SECTIONS:
                raise SuiteError(f"unknown config section {section!r}{did_you_mean(section, SECTIONS)}; accepted: "
                                 f"{', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise SuiteError(f"config section {section!r} must be a mapping, not {type(values).__name__}")
            merged.setdefault(section, {}).update(values)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise SuiteError(f"unknown config key {key!r}{did_you_mean(section, SECTIONS) if name else ''}; keys "
                             f"look like section.name with section one of {', '.join(SECTIONS)}")
        merged.setdefault(section, {})[name] = value
    cfg = RunConfig()
    for section, values in merged.items():
        setattr(cfg, section, typed(SECTIONS[section], values, "config", f"{section}.", EXTRA.get(section)))
    validate(cfg)
    return cfg


def typed(cls, values: dict[str, Any], kind: str, prefix: str = "", extra: str | None = None,
          qualified: bool = True):
    """``cls(**values)`` for a dataclass `cls`, each value coerced to its field's type (errors name
    ``prefix + key``): an unknown key (unless `extra` names the field that collects them) or a missing required
    one is refused in one line, e.g. "unknown config key 'optim.lrr'" or, not `qualified`, "unknown budget key
    'trails'"."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != extra}
    shown = prefix if qualified else ""
    kwargs: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for name, value in values.items():
        if name in fields:
            kwargs[name] = _coerce(f"{prefix}{name}", value, hints[name])
        elif extra:
            rest[name] = value  # e.g. task and cell options: checked by the task / cell registry in validate()
        else:
            key = f"{shown}{name}"
            hint = did_you_mean(key, [f"{shown}{k}" for k in fields])
            raise SuiteError(f"unknown {kind} key {key!r}{hint}; accepted: {', '.join(sorted(fields))}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SuiteError(f"missing {kind} key {shown + name!r}")
    if extra:
        kwargs[extra] = rest
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint) -> Any:
    if hint is Any:
        return value
    if get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise SuiteError(f"{key} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SuiteError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SuiteError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SuiteError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise SuiteError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set train.precision=32` or an experiment named 2024 read as numbers
        if not isinstance(value, str):
            raise SuiteError(f"{key} must be a string, got {value!r}")
        return value
    if get_args(hint):  # Optional[...] and friends
        return value
    return value


def _choice(key: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise SuiteError(f"{key}={value!r} is not accepted; choose one of: {', '.join(accepted)}")


def _positive(key: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise SuiteError(f"{key} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


def validate(cfg: RunConfig) -> None:
    """Range and choice checks; the task and cell registries check their own options later (at build)."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    _positive("model.hidden_size", m.hidden_size)
    _positive("model.layers", m.layers)
    if not 0.0 <= m.dropout < 1.0:
        raise SuiteError(f"model.dropout must be in [0, 1), got {m.dropout!r}")
    if not (isinstance(m.chrono_init, bool) or (isinstance(m.chrono_init, int) and m.chrono_init >= 3)):
        raise SuiteError(f"model.chrono_init must be true, false or an integer T_max >= 3, got {m.chrono_init!r}")
    _choice("model.init", m.init, INITS)
    _positive("model.init_range", m.init_range)
    _positive("model.embedding_size", m.embedding_size, zero_ok=True)
    _choice("optim.name", o.name, OPTIMIZERS)
    _positive("optim.lr", o.lr)
    _positive("optim.weight_decay", o.weight_decay, zero_ok=True)
    _positive("optim.momentum", o.momentum, zero_ok=True)
    _positive("optim.clip", o.clip, zero_ok=True)
    _choice("optim.schedule", o.schedule, SCHEDULES)
    _positive("optim.warmup_steps", o.warmup_steps, zero_ok=True)
    _positive("optim.decay_start", o.decay_start, zero_ok=True)
    if not 0.0 < o.decay_factor <= 1.0:
        raise SuiteError(f"optim.decay_factor must be in (0, 1], got {o.decay_factor!r}")
    _choice("optim.decay_unit", o.decay_unit, ("epoch", "step"))
    _positive("train.steps", t.steps)
    _positive("train.epochs", t.epochs, zero_ok=True)
    _choice("train.device", t.device, DEVICES)
    _choice("train.precision", t.precision, PRECISIONS)
    for key in ("log_every", "val_every", "grad_every", "diag_batch"):
        _positive(f"train.{key}", getattr(t, key))
    _positive("train.diag_every", t.diag_every, zero_ok=True)
    _positive("train.threads", t.threads, zero_ok=True)
    if t.seed < 0:
        raise SuiteError(f"train.seed must be >= 0, got {t.seed!r}")
    if not cfg.task.name or not isinstance(cfg.task.name, str):
        raise SuiteError("task.name must name a task (rnnsuite list tasks)")


def shipped_sweeps() -> dict[str, str]:
    """``sweeps/NAME.yaml`` -> its description, for every sweep file shipped with the package."""
    out = {}
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        try:
            description = str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
        except (OSError, yaml.YAMLError):
            description = "(unreadable)"
        out[f"sweeps/{path.name}"] = description
    return out


def find_sweep_file(name_or_path: str | Path) -> Path:
    """A sweep file path as given, else a shipped sweep by name (``smoke`` or ``sweeps/smoke.yaml``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = SWEEPS_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if shipped.is_file() and (len(p.parts) == 1 or p.parent.name == "sweeps"):
        return shipped
    names = [Path(k).stem for k in shipped_sweeps()]
    raise SuiteError(f"sweep file {str(p)!r} does not exist{did_you_mean(p.stem, names)}; shipped sweeps: "
                     f"{', '.join(names)}")
