"""The module path that saved model folders name in modules.json (`clusterns.st_modules.ClusternsEncoder`):
kept so that folders written by any version load; the class lives in clusterns/export/st_module.py."""
from clusterns.export.st_module import ClusternsEncoder

__all__ = ["ClusternsEncoder"]
