"""Where the server may deploy model files from.

Deploying a model runs its code with the server's rights: a cloudpickled function, a joblib
(pickled) scikit-learn estimator and a torch file (TorchScript, or an eager module, which is a
pickle) all execute code when loaded. So deploy is an admin route, and the file must be in a
directory an operator chose: `<home>/models-in/` always, plus every `serve --model-dir DIR`.
A path is checked after resolving symlinks and `..`, so a link inside an allowed directory to a
file elsewhere is refused, and it is checked before the file is looked at, so a refused path
says nothing about what exists outside.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from veloxserve.errors import Forbidden

INCOMING = "models-in"  # under the home: the directory every server deploys from


class ModelDirectories:
    """The directories deployable model files must resolve into."""

    def __init__(self, home: Path | str, extra: Iterable[Path | str] = ()) -> None:
        self.incoming = Path(home).resolve() / INCOMING
        self.roots: tuple[Path, ...] = tuple(dict.fromkeys([self.incoming, *(Path(d).resolve() for d in extra)]))

    def ensure_incoming(self) -> None:
        """Create `<home>/models-in/` so an operator finds where to put model files."""
        self.incoming.mkdir(parents=True, exist_ok=True)

    def check(self, model: Path | str) -> Path:
        """The resolved path of `model`, or Forbidden (403) when it lies outside every allowed directory."""
        resolved = Path(model).resolve()
        if any(resolved.is_relative_to(root) for root in self.roots):
            return resolved
        shown = f"{str(model)!r}" + ("" if str(resolved) == str(model) else f" (resolved: {str(resolved)!r})")
        raise Forbidden(
            f"The model file {shown} is outside the directories this server deploys from: "
            f"{[str(r) for r in self.roots]}. Deploying a model runs its code with the server's rights, so only "
            f"files an operator put there are accepted: copy it into {str(self.incoming)!r}, or start the server "
            "with `veloxserve serve --model-dir DIR`.",
            field="model",
        )
