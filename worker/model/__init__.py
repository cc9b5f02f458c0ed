"""The artifact this worker serves: where it comes from and the checks before serving."""
