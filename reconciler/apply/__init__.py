"""Apply: Plan -> destination calls -> state, in journaled, confirmed batches."""
