"""Token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023) in the exported UNet IR.

Before each self-attention at the UNet's highest resolution, the ``r`` source tokens most
similar to a destination token are averaged into it (bipartite soft matching); the
attention runs on ``N - r`` tokens; after it, every merged token takes its destination's
output again. Cross-attention and the MLPs are left alone (tomesd's defaults).

Written for OpenVINO, not for PyTorch:

- the partition is fixed, not random: the top-left token of every 2x2 block of the latent
  is a destination, the others are sources. With a static size it is a constant, so an IR
  is made for one size class (``TomeRecord.width`` x ``height``);
- every data-dependent move is a row ``Gather`` (``index_select``) or a one-hot ``MatMul``,
  never ``ScatterElementsUpdate`` / ``GatherElements``: tomesd's own scatter/gather ops
  cost OpenVINO 120-135 ms per 512x512 UNet call of the 145-220 ms the merge saves
  (docs/performance.md, "Token merging").

:func:`apply_tome` patches a diffusers ``UNet2DConditionModel`` in place (a wrapping
attention processor; the weights are untouched); :func:`export_tome_unet` converts the
patched UNet to an IR with the inputs and outputs of optimum-intel's export.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.errors import BuildInputError, ExportError

logger = logging.getLogger(__name__)

#: Highest merge ratio: every source token (3 of each 2x2 block) merged would leave only
#: the destinations; tomesd recommends at most 0.5-0.6 for images.
MAX_RATIO = 0.75
#: The VAE's downsampling: latent tokens per image side are pixels / 8.
VAE_FACTOR = 8
#: Side of the blocks that hold one destination token each.
STRIDE = 2
METHOD = (
    "ToMe for SD (Bolya & Hoffman 2023): bipartite soft matching, fixed destination "
    "(top-left of each 2x2 block), mean merge before each self-attention at the highest "
    "resolution, unmerge after; row Gather + one-hot MatMul, no scatter"
)


def check_ratio(ratio: float) -> float:
    """The ratio as a float in [0, MAX_RATIO]; BuildInputError naming --tome otherwise."""
    try:
        value = float(ratio)
    except (TypeError, ValueError) as e:
        raise BuildInputError(
            f"--tome={ratio!r} is not a number; pass the share of tokens to merge, "
            f"from 0 to {MAX_RATIO} (e.g. --tome 0.5)"
        ) from e
    if not 0.0 <= value <= MAX_RATIO:  # also refuses nan
        raise BuildInputError(
            f"--tome={ratio!r} is out of range: the share of tokens to merge must be from 0 "
            f"to {MAX_RATIO} (e.g. --tome 0.5; 0 or no --tome: no merging)"
        )
    return value


@dataclass(frozen=True)
class TomePlan:
    """The fixed partition of one latent size: how many tokens, how many merged."""

    latent_height: int
    latent_width: int
    ratio: float

    @property
    def tokens(self) -> int:
        return self.latent_height * self.latent_width

    @property
    def destinations(self) -> int:
        return len(self.positions()[1])

    @property
    def merged(self) -> int:
        """Tokens each patched self-attention saves: int(N * ratio), at most the sources."""
        return min(int(self.tokens * self.ratio), self.tokens - self.destinations)

    def positions(self) -> tuple[list[int], list[int]]:
        """(source positions, destination positions) in row-major token order."""
        src: list[int] = []
        dst: list[int] = []
        for y in range(self.latent_height):
            for x in range(self.latent_width):
                (dst if y % STRIDE == 0 and x % STRIDE == 0 else src).append(
                    y * self.latent_width + x
                )
        return src, dst

    @classmethod
    def for_image(cls, width: int, height: int, ratio: float) -> TomePlan:
        return cls(
            latent_height=height // VAE_FACTOR, latent_width=width // VAE_FACTOR, ratio=ratio
        )


class TomeProcessor:
    """Wraps a self-attention's processor: merge its input, run it, unmerge its output."""

    def __init__(self, inner: Any, plan: TomePlan) -> None:
        import torch

        self.inner = inner
        self.plan = plan
        src, dst = plan.positions()
        self.src = torch.tensor(src, dtype=torch.long)
        self.dst = torch.tensor(dst, dtype=torch.long)
        # Partition order (sources, then destinations) back to row-major order.
        order = src + dst
        inverse = [0] * len(order)
        for i, pos in enumerate(order):
            inverse[pos] = i
        self.inverse = torch.tensor(inverse, dtype=torch.long)
        #: How many tokens the last call's attention saw (tests read it).
        self.last_tokens: int | None = None

    def __call__(self, attn: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        r = self.plan.merged
        if r <= 0:
            self.last_tokens = int(hidden_states.shape[1])
            return self.inner(attn, hidden_states, *args, **kwargs)
        if hidden_states.ndim != 3 or hidden_states.shape[1] != self.plan.tokens:
            raise ExportError(
                f"token merging was planned for {self.plan.tokens} tokens "
                f"({self.plan.latent_width}x{self.plan.latent_height} latent), the attention "
                f"got shape {tuple(hidden_states.shape)}: export at the planned size"
            )
        merged, unmerge = self.merge(hidden_states, r)
        self.last_tokens = int(merged.shape[1])  # what the attention sees
        return unmerge(self.inner(attn, merged, *args, **kwargs))

    def merge(self, x: Any, r: int) -> tuple[Any, Any]:
        """(x with r tokens merged, the function that restores N tokens)."""
        import torch

        b, n, c = x.shape
        ns, nd = self.plan.tokens - self.plan.destinations, self.plan.destinations
        xs = torch.index_select(x, 1, self.src)
        xd = torch.index_select(x, 1, self.dst)
        # Cosine similarity of every source to every destination.
        metric = x / x.norm(dim=-1, keepdim=True)
        scores = torch.index_select(metric, 1, self.src) @ torch.index_select(
            metric, 1, self.dst
        ).transpose(-1, -2)
        node_max, node_idx = scores.max(dim=-1)  # (b, ns): best destination of each source
        order = node_max.argsort(dim=-1, descending=True)  # most similar sources first
        offsets = torch.arange(b).unsqueeze(1)
        # Row Gathers over the flattened batch instead of GatherElements.
        flat = (order + offsets * ns).reshape(-1)
        ranked = torch.index_select(xs.reshape(b * ns, c), 0, flat).reshape(b, ns, c)
        dst_of = torch.index_select(node_idx.reshape(-1), 0, flat).reshape(b, ns)[:, :r]
        # Mean of each destination and the sources merged into it: a one-hot MatMul
        # instead of scatter_reduce.
        onehot = (dst_of.unsqueeze(1) == torch.arange(nd).view(1, nd, 1)).to(x.dtype)
        merged_dst = (xd + onehot @ ranked[:, :r]) / (1 + onehot.sum(dim=-1, keepdim=True))
        merged = torch.cat([ranked[:, r:], merged_dst], dim=1)  # (b, n - r, c)

        # Where each token's output comes from, in merged rows: kept sources at their rank,
        # merged sources at their destination, destinations at theirs.
        rank = order.to(torch.float32).argsort(dim=-1)  # inverse permutation of order
        keep = ns - r
        from_src = torch.where(rank < r, keep + node_idx, rank - r)
        from_dst = (keep + torch.arange(nd)).unsqueeze(0).expand(b, nd)
        rows = torch.index_select(torch.cat([from_src, from_dst], dim=1), 1, self.inverse)
        rows = (rows + offsets * (n - r)).reshape(-1)

        def unmerge(y: Any) -> Any:
            return torch.index_select(y.reshape(b * (n - r), -1), 0, rows).reshape(b, n, -1)

        return merged, unmerge


def highest_resolution_blocks(unet: Any) -> list[Any]:
    """The transformer blocks of the UNet's first down block and last up block."""
    blocks: list[Any] = []
    for part in (unet.down_blocks[0], unet.up_blocks[-1]):
        for transformer in getattr(part, "attentions", None) or []:
            blocks.extend(getattr(transformer, "transformer_blocks", []))
    return blocks


def apply_tome(unet: Any, plan: TomePlan) -> list[TomeProcessor]:
    """Patch every highest-resolution self-attention of ``unet``; the processors added."""
    blocks = highest_resolution_blocks(unet)
    if not blocks:
        raise BuildInputError(
            "--tome: the UNet has no self-attention at its highest resolution (first down "
            "block, last up block) to merge tokens in; build without --tome"
        )
    processors = []
    for block in blocks:
        processor = TomeProcessor(block.attn1.processor, plan)
        block.attn1.set_processor(processor)
        processors.append(processor)
    return processors


def _export_inputs(reference_xml: Path) -> list[tuple[str, Any, list[int | None]]]:
    """(name, element type, dims with None where dynamic) of each UNet input, in order."""
    import openvino as ov

    model = ov.Core().read_model(str(reference_xml))
    return [
        (
            port.get_any_name(),
            port.get_element_type(),
            [d.get_length() if d.is_static else None for d in port.get_partial_shape()],
        )
        for port in model.inputs
    ]


class _UnetForExport:
    """UNet forward with the IR's inputs as positional arguments, the sample as output."""

    def __new__(cls, unet: Any, names: list[str]) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.unet = unet

            def forward(self, *args: Any) -> Any:
                return self.unet(**dict(zip(names, args, strict=True)), return_dict=False)[0]

        return Wrapper()


def export_tome_unet(
    source: str | Path,
    out_xml: Path,
    reference_xml: Path,
    plan: TomePlan,
    *,
    batch: int = 1,
    revision: str = "main",
) -> int:
    """Load ``source``'s UNet, patch it, and save it as a static IR at ``plan``'s size with
    ``reference_xml``'s inputs and output (its names and element types). The number of
    patched self-attentions."""
    import openvino as ov
    import torch
    from diffusers import UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(
            str(source), subfolder="unet", revision=revision, torch_dtype=torch.float32
        ).eval()
    except Exception as e:
        raise ExportError(f"could not load the UNet of {str(source)!r} for --tome: {e}") from e
    patched = apply_tome(unet, plan)
    cfg = unet.config
    inputs = _export_inputs(reference_xml)
    names = [name for name, _, _ in inputs]
    dims = {name: shape for name, _, shape in inputs}
    # The text length is the export's (77 for CLIP; the reference model's is shorter).
    text_length = (dims.get("encoder_hidden_states") or [None, 77])[1] or 77
    examples = {
        "sample": torch.randn(batch, cfg.in_channels, plan.latent_height, plan.latent_width),
        "timestep": torch.tensor([999] * batch, dtype=torch.int64),
        "encoder_hidden_states": torch.randn(batch, text_length, cfg.cross_attention_dim),
        "timestep_cond": torch.randn(batch, cfg.time_cond_proj_dim or 256),
    }
    unknown = [n for n in names if n not in examples]
    if unknown:
        raise ExportError(f"--tome: the exported UNet has inputs this build cannot feed: {unknown}")
    example = tuple(examples[n] for n in names)
    try:
        # Tracing warns about every shape it takes as a constant: here, all of them are.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(
                _UnetForExport(unet, names),
                example_input=example,
                input=[list(t.shape) for t in example],
            )
    except Exception as e:
        raise ExportError(f"could not convert the token-merging UNet to OpenVINO IR: {e}") from e
    for port, (name, element_type, _) in zip(model.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
        if port.get_element_type() != element_type:
            raise ExportError(
                f"--tome: input {name} converted as {port.get_element_type()}, "
                f"the export has {element_type}"
            )
    model.outputs[0].get_tensor().set_names({"out_sample"})
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    logger.info(
        "token merging: %d self-attentions at %dx%d latent merge %d of %d tokens",
        len(patched),
        plan.latent_width,
        plan.latent_height,
        plan.merged,
        plan.tokens,
    )
    return len(patched)


def count_ops(xml: Path, types: tuple[str, ...]) -> dict[str, int]:
    """How many ops of each of ``types`` the IR holds (tests and benchmarks check the merge)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    counts = dict.fromkeys(types, 0)
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind in counts:
            counts[kind] += 1
    return counts


def record(plan: TomePlan, patched: int) -> dict[str, Any]:
    """The manifest's ``tome`` section."""
    return {
        "ratio": plan.ratio,
        "width": plan.latent_width * VAE_FACTOR,
        "height": plan.latent_height * VAE_FACTOR,
        "tokens": plan.tokens,
        "merged_tokens": plan.merged,
        "self_attentions": patched,
        "method": METHOD,
    }
