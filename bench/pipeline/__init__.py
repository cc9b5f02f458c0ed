"""Whole-pipeline benchmark: PyTorch fp32 vs OpenVINO default/f32 vs our INT8 worker path.

Entry point: ``python -m bench.pipeline.run`` (see :mod:`bench.pipeline.run`).
"""
