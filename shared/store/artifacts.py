"""The local artifact store under ``Settings.home``.

Layout::

    models/<model_id>.pt         FIR model files (identity = sha256 prefix)
    features/<model_id>/<name>.npz
    routers/<model_id>.joblib
    runs/<timestamp>/            training runs (best.pt, last.pt, history.json)
    reports/<timestamp>/         evaluation reports
    current.json                 the model, features and router the CLI uses by default
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import NotFound


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"


@dataclass
class ArtifactStore:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_run_dir(self) -> Path:
        return self._dir("runs", _stamp())

    def new_report_dir(self) -> Path:
        return self._dir("reports", _stamp())

    def model_path(self, model_id: str) -> Path:
        return self._dir("models") / f"{model_id}.pt"

    def features_path(self, model_id: str, name: str = "catalogue") -> Path:
        return self._dir("features", model_id) / f"{name}.npz"

    def router_path(self, model_id: str) -> Path:
        return self._dir("routers") / f"{model_id}.joblib"

    def import_model(self, path: Path, model_id: str) -> Path:
        """Copy a trained model file into ``models/`` under its id."""
        dest = self.model_path(model_id)
        if Path(path).resolve() != dest:
            shutil.copy2(path, dest)
        return dest

    # -- what the CLI uses by default -------------------------------------------------
    @property
    def _current_file(self) -> Path:
        return self.root / "current.json"

    def current(self) -> dict[str, str]:
        if not self._current_file.is_file():
            return {}
        data = json.loads(self._current_file.read_text())
        return {str(k): str(v) for k, v in data.items()}

    def set_current(self, **paths: Path | str) -> None:
        data = self.current()
        data.update({k: str(v) for k, v in paths.items()})
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._current_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self._current_file)

    def require(self, name: str, given: Path | None, hint: str) -> Path:
        """``given`` if set, else the current artifact ``name``; a clear error if neither."""
        if given is not None:
            if not Path(given).exists():
                raise NotFound(f"{name} {given} does not exist")
            return Path(given)
        current = self.current().get(name)
        if not current:
            raise NotFound(f"no {name} given and none in {self.root}; {hint}")
        if not Path(current).exists():
            raise NotFound(f"the current {name} {current} no longer exists; {hint}")
        return Path(current)
