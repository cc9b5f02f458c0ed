"""The reference LCM: a small LCM trained offline on a procedural domain, and its scorer.

- :mod:`~model_build.reference.domain`: the scenes (a coloured shape on a coloured
  background), their captions, the held-out split and the Pillow renderer.
- :mod:`~model_build.reference.scorer`: reads a render back into its shape and colours,
  and turns a batch of renders into a prompt-adherence percentage.
- :mod:`~model_build.reference.train`: VAE, then a latent diffusion teacher, then latent
  consistency distillation, with resumable checkpoints; writes a diffusers folder.

The domain and the scorer import only Pillow and numpy; training needs torch.
"""
