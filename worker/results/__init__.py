"""Result writing: PNG encoding with metadata, verified uploads, result.json."""
