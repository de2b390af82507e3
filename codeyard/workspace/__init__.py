"""Git repositories of a run: the integration clone, checkouts for workers, the result branch."""
