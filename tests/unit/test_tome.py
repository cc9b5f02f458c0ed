"""--tome: token merging on the tiny UNet, its IR ops, the manifest record, bad ratios."""

from __future__ import annotations

import json

import pytest

from lcm_fleet.artifact.manifest import TomeRecord, read_manifest, write_manifest
from model_build import cli
from model_build.errors import BuildInputError
from model_build.tome import MAX_RATIO, TomePlan, TomeProcessor, apply_tome, check_ratio, record

torch = pytest.importorskip("torch")

#: The tiny model's latent side at 64 px: 64 tokens at the highest resolution.
IMAGE = 64


@pytest.fixture(scope="module")
def built_unet():
    """The tiny UNet, built once (importing diffusers is most of this module's time)."""
    from diffusers import UNet2DConditionModel

    from model_build.tiny import TIME_COND_PROJ_DIM, TinySpec, tiny_architecture

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        time_cond_proj_dim=TIME_COND_PROJ_DIM,
        **tiny_architecture(TinySpec(image_size=IMAGE)).unet,
    )
    return unet.eval()


@pytest.fixture
def tiny_unet(built_unet):
    import copy

    return copy.deepcopy(built_unet)


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    side = IMAGE // 8
    return dict(
        sample=torch.randn(1, 4, side, side, generator=g),
        timestep=torch.tensor([499]),
        encoder_hidden_states=torch.randn(1, 77, 64, generator=g),
        timestep_cond=torch.randn(1, 256, generator=g),
    )


def run(unet):
    with torch.no_grad():
        return unet(**unet_inputs()).sample


def test_ratio_zero_matches_the_unpatched_unet_exactly(tiny_unet):
    unet = tiny_unet
    before = run(unet)
    processors = apply_tome(unet, TomePlan.for_image(IMAGE, IMAGE, 0.0))
    assert len(processors) == 3  # the first down block's and the last up block's
    assert torch.equal(run(unet), before)
    assert [p.last_tokens for p in processors] == [64, 64, 64]


@pytest.mark.parametrize(("ratio", "merged"), [(0.3, 19), (0.5, 32), (MAX_RATIO, 48)])
def test_each_patched_attention_sees_the_stated_tokens(ratio, merged, tiny_unet):
    unet = tiny_unet
    before = run(unet)
    plan = TomePlan.for_image(IMAGE, IMAGE, ratio)
    processors = apply_tome(unet, plan)
    after = run(unet)
    assert plan.merged == merged == int(64 * ratio)
    assert [p.last_tokens for p in processors] == [64 - merged] * 3
    assert torch.isfinite(after).all() and not torch.equal(after, before)


def scatter_reference(x, plan, r):
    """tomesd's arithmetic (gather/scatter_reduce) on the same fixed partition."""
    src, dst = (torch.tensor(p) for p in plan.positions())
    a, b = x[:, src], x[:, dst]
    m = x / x.norm(dim=-1, keepdim=True)
    node_max, node_idx = (m[:, src] @ m[:, dst].transpose(-1, -2)).max(dim=-1)
    order = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = order[:, r:], order[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)
    c = x.shape[-1]
    unm = a.gather(1, unm_idx.expand(-1, -1, c))
    moved = a.gather(1, src_idx.expand(-1, -1, c))
    merged_dst = b.scatter_reduce(1, dst_idx.expand(-1, -1, c), moved, reduce="mean")
    merged = torch.cat([unm, merged_dst], dim=1)
    out = torch.zeros_like(x)
    out[:, dst] = merged_dst
    out[:, src] = out[:, src].scatter(1, unm_idx.expand(-1, -1, c), unm)
    taken = merged_dst.gather(1, dst_idx.expand(-1, -1, c))
    out[:, src] = out[:, src].scatter(1, src_idx.expand(-1, -1, c), taken)
    return merged, out


def test_merge_and_unmerge_match_the_scatter_arithmetic():
    plan = TomePlan.for_image(48, 40, 0.5)  # 6x5 latent: odd side, partial blocks
    processor = TomeProcessor(None, plan)
    x = torch.randn(2, plan.tokens, 8, generator=torch.Generator().manual_seed(2))
    merged, unmerge = processor.merge(x, plan.merged)
    want_merged, want_out = scatter_reference(x, plan, plan.merged)
    assert merged.shape == (2, plan.tokens - plan.merged, 8)
    torch.testing.assert_close(merged, want_merged)
    torch.testing.assert_close(unmerge(merged), want_out)


class SelfAttention(torch.nn.Module):
    """A self-attention whose processor is swappable, as diffusers' Attention's is."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.processor = TomeProcessor(
            lambda attn, h: attn.mha(h, h, h, need_weights=False)[0],
            TomePlan.for_image(IMAGE, IMAGE, 0.5),
        )

    def forward(self, x):
        return self.processor(self, x)


def test_the_merge_converts_to_row_gathers_and_matmuls_only():
    import openvino as ov

    torch.manual_seed(0)
    attn = SelfAttention().eval()
    x = torch.randn(1, 64, 16)
    with torch.no_grad():
        want = attn(x)
        model = ov.convert_model(attn, example_input=(x,), input=[[1, 64, 16]])
    ops = {op.get_type_name() for op in model.get_ops()}
    assert "TopK" in ops and "Gather" in ops  # the merge is in the graph
    assert not ops & {"ScatterElementsUpdate", "GatherElements", "ScatterNDUpdate", "GatherND"}
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())
    torch.testing.assert_close(torch.from_numpy(got[0]), want, atol=1e-5, rtol=1e-4)


def test_manifest_tome_record_round_trips(tmp_path):
    plan = TomePlan.for_image(512, 512, 0.5)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "openvino_model.xml").write_text("<net/>")
    write_manifest(tmp_path, {"precision": "int8-unet", "tome": record(plan, 5)})
    raw = (tmp_path / "manifest.json").read_text()
    manifest = read_manifest(tmp_path)
    assert manifest.tome == TomeRecord(**json.loads(raw)["tome"])
    assert (manifest.tome.ratio, manifest.tome.width, manifest.tome.merged_tokens) == (
        0.5,
        512,
        2048,
    )
    assert manifest.to_json() == raw
    assert manifest.tome.size_refusal([(512, 512)], "here") is None
    refusal = manifest.tome.size_refusal([(512, 512), (768, 512)], "here")
    assert refusal is not None and "768x512" in refusal and "--tome 0.5" in refusal


@pytest.mark.parametrize("value", ["-0.1", "0.8", "1", "nan", "half"])
def test_bad_ratio_is_refused_naming_the_option_value_and_range(value):
    with pytest.raises(BuildInputError) as e:
        check_ratio(value)
    assert "--tome" in str(e.value) and repr(value) in str(e.value)
    assert f"0 to {MAX_RATIO}" in str(e.value)


@pytest.mark.parametrize("command", ["export", "build"])
def test_the_cli_refuses_a_bad_ratio_before_any_work(command, tmp_path, capsys):
    code = cli.main([command, "owner/model", str(tmp_path / "out"), "--tome", "0.9"])
    assert code == 2
    assert "--tome='0.9'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_hybrid_does_not_take_token_merging(tmp_path):
    from model_build.build import build_artifact

    with pytest.raises(BuildInputError, match=r"--tome=0\.5 does not combine with --precision"):
        build_artifact("owner/model", tmp_path / "out", precision="hybrid", tome=0.5)
