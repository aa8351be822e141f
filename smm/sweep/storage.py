"""Where a study lives and how it is opened.

The URL comes from ``hydra.sweeper.storage`` (smm moves a command-line value into
``SMM_SWEEP_STORAGE`` before Hydra records anything, so a password never reaches ``.hydra/``),
else from that environment variable, else it is ``sqlite:///<sweep.dir>/<study>.db``. The storage
is an Optuna ``RDBStorage`` with heartbeats: a trial whose worker dies is failed after the grace
period and queued again once (``RetryFailedTrialCallback``).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from smm.errors import SmmError
from smm.secrets import mask_url, redact

STORAGE_ENV = "SMM_SWEEP_STORAGE"


def storage_url(configured: str | None, env: dict, sweep_dir: str, study: str) -> str:
    """The study's storage URL: configured, else $SMM_SWEEP_STORAGE, else SQLite in ``sweep_dir``."""
    url = configured or env.get(STORAGE_ENV)
    if url:
        return str(url)
    return f"sqlite:///{Path(sweep_dir).resolve() / f'{study}.db'}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url[len("sqlite:///"):])


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 1, create: bool = True):
    """An ``optuna.storages.RDBStorage`` for ``url``; any failure is one line with the password masked."""
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    path = sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise SmmError(f"no study database at {path}: run a sweep first (python run.py -m hparams_search=optuna)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SmmError(f"hydra.sweeper.storage: cannot create {path.parent} ({exc.strerror})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" in Optuna 2.x
        retry = RetryFailedTrialCallback(max_retry=max_retry) if heartbeat_interval else None
    for attempt in range(3):  # workers starting together may race to create the schema
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                              failed_trial_callback=retry)
        except Exception as exc:  # any failure to open the storage is the user's URL, server or folder
            reason = exc.__cause__ or exc
            if attempt == 2 or "already exists" not in str(reason) and "duplicate key" not in str(reason):
                message = " ".join(str(reason).split("\n")[0].split())
                raise SmmError(f"hydra.sweeper.storage {mask_url(url)}: {redact(message, url)}") from None
            time.sleep(1 + attempt)
