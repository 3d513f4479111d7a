"""Local fake servers of the vendors our destinations speak (each enforces its contract)."""
