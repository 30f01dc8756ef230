"""Integrations of storecomp with inference engines (imported on demand: each pulls in its engine)."""
