"""Re-drive of the appeals a lost broker held: the code lives in `shared.redrive`, because every
worker's runtime calls it when it finds the broker came back empty."""

from shared.redrive import redrive, redrive_once, stalled_appeals

__all__ = ["redrive", "redrive_once", "stalled_appeals"]
