"""The entrypoint's plumbing: stage dispatch, secrets kept out of Hydra, one-line errors."""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from smm import stages
from smm.config import GROUPS, unknown_key_error, validate
from smm.errors import SmmError
from smm.io import atomic_writer
from smm.cpu_share import choose_wait_policy
from smm.secrets import MaskingStream, mask_url, secrets_in_environment, url_secrets

log = logging.getLogger(__name__)

# Overrides that hold secrets: taken off the command line before Hydra records it, and handed
# to the stage (or the sweeper) through the environment variable it reads anyway.
SECRET_OVERRIDES = {"feedback.database_url": "DATABASE_URL", "eval.judge.url": "SMM_JUDGE_URL",
                    "hydra.sweeper.storage": "SMM_SWEEP_STORAGE"}
# Keys whose value is a secret even without "://" (a libpq "host=… password=…" string).
SECRET_KEY_NAMES = frozenset(name.rsplit(".", 1)[-1] for name in SECRET_OVERRIDES)
# Any other key given a URL with credentials (eval.url=http://user:pw@host) keeps its value in this
# variable; Hydra records only the interpolation ${oc.env:SMM_SECRET_EVAL_URL}.
SECRET_ENV_PREFIX = "SMM_SECRET_"
# Variables that hold API keys (the defaults of eval.api_key_env and eval.judge.api_key_env, wandb's).
API_KEY_VARIABLES = ("OPENAI_API_KEY", "SMM_JUDGE_API_KEY", "WANDB_API_KEY")

# Module a missing import belongs to → the extra that installs it.
EXTRA_FOR_MODULE = {
    "torch": "train", "transformers": "train", "peft": "train", "trl": "train", "datasets": "train",
    "accelerate": "train", "bitsandbytes": "train", "unsloth": "unsloth", "llama_cpp": "export",
    "gguf": "export", "conversion": "export", "httpx": "eval", "psycopg2": "feedback",
    "wandb": "wandb", "optuna": "sweep",
}


_USER_FULL_ERROR = "SMM_FULL_ERROR"  # set when the user asked for tracebacks (HYDRA_FULL_ERROR=1)


def move_secrets_to_env(args: list[str]) -> list[str]:
    """Take secrets off ``args``, exporting each value to an environment variable.

    A secret key's override is dropped (the stage reads its variable); any other key whose value is
    a URL with credentials is replaced by an interpolation of the variable that now holds it.
    """
    kept = []
    for arg in args:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        value = value[1:-1] if quoted else value  # Hydra would have unquoted it
        env = SECRET_OVERRIDES.get(name)
        if sep and env:
            os.environ[env] = value
        elif sep and "://" in value and url_secrets(value):
            env = SECRET_ENV_PREFIX + re.sub(r"\W", "_", name).upper()
            os.environ[env] = value
            kept.append(f"{key}=${{oc.env:{env}}}")
        else:
            kept.append(arg)
    return kept


def run_stage(cfg: DictConfig) -> float:
    """Validate the config, run the chosen stage and return its float result (for sweeps).

    A user error ends the process here with one line, before Hydra adds its own report. In a
    multirun the job's outputs move into its own folder first (:mod:`smm.sweep.job_outputs`).
    """
    try:
        if _in_multirun():
            from smm.sweep.job_outputs import use_job_folder

            use_job_folder(cfg)
        mask_hydra_records()
        validate(cfg)
        log.debug("OpenMP wait policy: %s", choose_wait_policy(cfg.training.cpu_threads, cfg.eval.threads))
        return stages.run(cfg.stage, cfg)
    except SmmError as exc:
        if os.environ.get(_USER_FULL_ERROR):
            raise
        if _in_multirun():  # the sweeper records the failed trial (Optuna goes on up to max_failure_rate)
            raise
        _fail(str(exc), exc.exit_code, exc.label)
    except ModuleNotFoundError as exc:  # here, before Hydra prints "Error executing job ..."
        if os.environ.get(_USER_FULL_ERROR) or _in_multirun() or not missing_extra(exc):
            raise
        _fail(missing_extra(exc), 1)


def _masked(value, key: str = ""):
    """``value`` (plain YAML data) with the password of every URL-like string masked."""
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if isinstance(value, str) and ("://" in value or key in SECRET_KEY_NAMES) and url_secrets(value):
        return mask_url(value)
    return value


def mask_hydra_records() -> None:
    """Mask passwords that a config *file* put into Hydra's records of this job (``.hydra/*.yaml``,
    a multirun's ``multirun.yaml``): Hydra writes them just before the job starts. Passwords given
    on the command line never get there (:func:`move_secrets_to_env`)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    records = [Path(hydra.sweep.dir) / "multirun.yaml"] if _in_multirun() else []
    if hydra.output_subdir is not None:
        records += [Path(hydra.runtime.output_dir) / hydra.output_subdir / name
                    for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    for path in records:
        if not path.is_file():
            continue
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        masked = _masked(data)
        if masked != data:
            with atomic_writer(path) as fh:
                fh.write(OmegaConf.to_yaml(OmegaConf.create(masked)))


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line hint for a module that an smm extra installs, or None for any other module."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_FOR_MODULE:
        return None
    return f"missing package {top!r}: install it with pip install -e '.[{EXTRA_FOR_MODULE[top]}]'"


def validate_shown_config(argv: list[str], config_dir: str) -> None:
    """With ``--cfg`` (however it is spelled: ``--cfg job``, ``--cfg=job``, ``-cjob``), Hydra prints
    the config without running the app: validate it here first, composed as Hydra composes it
    (the same command-line parser, ``--config-dir``/``--config-path``/``--config-name`` included)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser

    from smm.config import register_configs

    args, _ = get_args_parser().parse_known_args(argv)
    if args.cfg is None:
        return
    primary = Path(config_dir)
    if args.config_path:  # absolute, or relative to the app's folder (where run.py is)
        primary = primary.parent / args.config_path
    overrides = list(args.overrides)
    if args.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).absolute()}]")
    register_configs()
    with initialize_config_dir(config_dir=str(primary.absolute()), version_base="1.3"):
        validate(compose(args.config_name or "config", overrides=overrides))


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _known_keys(full_key: str) -> list[str]:
    group = full_key.split(".", 1)[0]
    schema = GROUPS.get(group)
    return [f"{group}.{name}" for name in getattr(schema, "__dataclass_fields__", {})]


def describe_config_error(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error, naming the key."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options is not None:
        options = ", ".join(o for o in exc.options if not o.startswith("base_"))
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return f"{group}={option}: no such option (available: {options})"
    cause = exc.__cause__ or exc
    full_key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    message = getattr(cause, "msg", None) or str(cause)
    message = " ".join(message.split("full_key:")[0].split())
    if full_key and "not in" in message and message.startswith("Key"):
        return str(unknown_key_error(full_key, _known_keys(full_key)))
    if full_key:
        return f"{full_key}: {message}"
    return re.sub(r"\s+", " ", str(exc)).strip()


def _raised_by_hydra(exc: BaseException) -> bool:
    """Raised inside Hydra, or inside Optuna under its sweeper (e.g. "No trials are completed yet.")."""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return any(f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename for package in ("hydra", "optuna"))


def _fail(message: str, code: int, label: str = "error") -> None:
    print(f"{label}: {message}", file=sys.stderr)
    sys.exit(code)


def guarded(main: Callable[[], object], config_dir: str | None = None) -> None:
    """Run a ``@hydra.main`` function; user errors end in one line and a non-zero exit code.

    ``config_dir`` (the app's config folder) lets ``--cfg`` validate the config it prints. Everything
    printed meanwhile, by smm or by Hydra (``--cfg``, ``--resolve``, ``--info``), goes through
    :class:`~smm.secrets.MaskingStream`: no URL password or key reaches the screen.
    """
    sys.argv = [sys.argv[0], *move_secrets_to_env(sys.argv[1:])]
    streams = sys.stdout, sys.stderr
    secrets = secrets_in_environment(tuple(SECRET_OVERRIDES.values()), API_KEY_VARIABLES, SECRET_ENV_PREFIX)
    sys.stdout, sys.stderr = MaskingStream(sys.stdout, secrets), MaskingStream(sys.stderr, secrets)
    _guarded(main, config_dir)
    sys.stdout, sys.stderr = streams  # kept when an error escapes: its traceback is masked too


def _guarded(main: Callable[[], object], config_dir: str | None) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if full_error:
        os.environ[_USER_FULL_ERROR] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    try:
        if config_dir:
            validate_shown_config(sys.argv[1:], config_dir)
        main()
    except SmmError as exc:
        if full_error:
            raise
        _fail(str(exc), exc.exit_code, exc.label)
    except (HydraException, OmegaConfBaseException) as exc:
        if full_error:
            raise
        _fail(describe_config_error(exc), 2)
    except ValueError as exc:  # Hydra's own command-line conflicts, e.g. -m together with --cfg
        if full_error or not _raised_by_hydra(exc):
            raise
        _fail(str(exc), 2)
    except ModuleNotFoundError as exc:
        if full_error or not missing_extra(exc):
            raise
        _fail(missing_extra(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
