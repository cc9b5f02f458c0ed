"""Rendering: the genai pipeline, the render process and its slots, sizes, memory, limits."""
