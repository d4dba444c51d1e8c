"""Desired state, its version history and the registered instances, kept durably."""

from control.store.base import Change, HistoryEntry, Loaded, Store, StoreError, VersionConflict

__all__ = ["Change", "HistoryEntry", "Loaded", "Store", "StoreError", "VersionConflict"]
