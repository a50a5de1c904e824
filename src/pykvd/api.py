"""The entry points: pykvd.Model (a loaded model that opens sessions) and pykvd.load.

The model layer (pykvd.model) knows nothing of sessions, so that sessions can build on it
without an import running back up; opening a session is added here, above both.
"""

from __future__ import annotations

import os

from .model import LoadedModel
from .session import Session


class Model(LoadedModel):
    __doc__ = LoadedModel.__doc__

    def session(self, **kwargs) -> Session:
        """A new Session over this model; see pykvd.Session for the arguments."""
        return Session(self, **kwargs)


def load(model: str | os.PathLike[str], **kwargs) -> Model:
    """Load a GGUF path or a fetchable model name; keyword arguments as for Model."""
    return Model(model, **kwargs)
