"""The memory budget of a worker's size classes, against a fake pipeline and a fake RSS."""

import pytest

from worker.render.memory import (
    GIB,
    MemoryBudgetExceeded,
    estimate_gib,
    load_size_classes,
    rss_bytes,
    weights_bytes,
)


class FakeMemory:
    """RSS that grows by a given amount per compiled size."""

    def __init__(self, growth_gib, pipeline_class):
        self.growth_gib, self.rss, self.compiled = growth_gib, 1 * GIB, []
        self.pipeline_class = pipeline_class

    def read(self):
        return self.rss

    def loader(self, size):
        self.compiled.append(size)
        self.rss += int(self.growth_gib[size] * GIB * 0.8)
        memory = self

        class Warming(self.pipeline_class):
            def generate(self, prompt, seed, steps, guidance_scale):
                memory.rss += int(memory.growth_gib[size] * GIB * 0.2)  # the first inference
                return super().generate(prompt, seed, steps, guidance_scale)

        return Warming(*size)


@pytest.fixture
def memory_for(fake_pipeline):
    """``memory_for(growth_gib)``: a FakeMemory whose loader builds fake pipelines."""
    return lambda growth_gib: FakeMemory(growth_gib, fake_pipeline)


SIZES = [(512, 512), (768, 512)]


def test_loads_every_size_within_the_budget(memory_for):
    mem = memory_for({(512, 512): 2.5, (768, 512): 3.0})
    loaded = load_size_classes(SIZES, mem.loader, estimate_gib=1.0, budget_gib=6.0, rss=mem.read)
    assert mem.compiled == SIZES
    assert [round(m.rss_growth_gib, 2) for m in loaded.loads] == [2.5, 3.0]
    assert [round(m.warmup_gib, 2) for m in loaded.loads] == [0.5, 0.6]
    assert [c[1:3] for c in loaded.pipelines.get((512, 512)).calls] == [(0, 1)]  # 1-step warm-up
    assert loaded.total_gib == pytest.approx(5.5, abs=0.01)
    assert loaded.pipelines.default == (512, 512)
    assert loaded.pipelines.get((768, 512)).width == 768


def test_measured_total_above_the_budget_is_refused(memory_for):
    mem = memory_for({(512, 512): 2.5, (768, 512): 3.0})
    with pytest.raises(MemoryBudgetExceeded) as info:
        load_size_classes(SIZES, mem.loader, estimate_gib=1.0, budget_gib=5.0, rss=mem.read)
    message = str(info.value)
    assert message.startswith("LCM_MEMORY_BUDGET_GIB=5 is too small for the size classes")
    assert "2.50 (512x512) + 3.00 (768x512) GiB while loading and warming up" in message
    assert "5.50 GiB in all" in message
    assert "raise LCM_MEMORY_BUDGET_GIB to at least 6.05" in message
    assert "serve fewer sizes" in message


def test_refused_before_compiling_the_rest_when_the_lower_bound_cannot_fit(memory_for):
    mem = memory_for({(512, 512): 3.5, (768, 512): 3.0})
    with pytest.raises(MemoryBudgetExceeded, match=r"the 1 still to compile take at least 2\.00"):
        load_size_classes(SIZES, mem.loader, estimate_gib=2.0, budget_gib=5.0, rss=mem.read)
    assert mem.compiled == [(512, 512)]


def test_estimate_refuses_before_any_compile(memory_for):
    mem = memory_for({(512, 512): 1.0, (768, 512): 1.0})
    with pytest.raises(MemoryBudgetExceeded, match=r"estimated before compiling at 2\.00 GiB"):
        load_size_classes(SIZES, mem.loader, estimate_gib=2.0, budget_gib=3.0, rss=mem.read)
    assert mem.compiled == []


def test_no_budget_loads_everything(memory_for):
    mem = memory_for({(512, 512): 9.0, (768, 512): 9.0})
    loaded = load_size_classes(SIZES, mem.loader, estimate_gib=1.0, budget_gib=None, rss=mem.read)
    assert loaded.total_gib == pytest.approx(18.0, abs=0.01) and loaded.budget_gib is None


def test_without_warmup_only_the_load_counts(memory_for):
    mem = memory_for({(512, 512): 2.5, (768, 512): 3.0})
    loaded = load_size_classes(
        SIZES, mem.loader, estimate_gib=1.0, budget_gib=5.0, warmup=False, rss=mem.read
    )
    assert loaded.total_gib == pytest.approx(4.4, abs=0.01)
    assert loaded.pipelines.get((512, 512)).calls == []


def test_weights_count_the_parts_the_pipeline_loads(tmp_path):
    for part, size in (("unet", 3000), ("text_encoder", 1000), ("vae_decoder", 500)):
        (tmp_path / part).mkdir()
        (tmp_path / part / "openvino_model.bin").write_bytes(b"\0" * size)
        (tmp_path / part / "openvino_model.xml").write_bytes(b"\0" * 7)
    (tmp_path / "vae_encoder").mkdir()
    (tmp_path / "vae_encoder" / "openvino_model.bin").write_bytes(b"\0" * 800)
    assert weights_bytes(tmp_path) == 4500
    assert 0 < estimate_gib(tmp_path) < 4500 / GIB


def test_rss_is_read():
    before = rss_bytes()
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"\1" * len(block[::4096])
    assert rss_bytes() - before > 32 * 1024 * 1024
