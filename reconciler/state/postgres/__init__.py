"""The PostgreSQL state backend (docs/state.md)."""
