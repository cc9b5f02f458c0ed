"""lcm-build train-decoder: its input checks, the decoder it sizes from the model, and how
``--vae-decoder taesd`` finds a model's own trained decoder. No torch here (the training
itself is tested in tests/integration/test_train_decoder.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model_build import cli
from model_build.errors import BuildInputError
from model_build.train_decoder import (
    DecoderRecipe,
    architecture,
    check_model,
    check_out,
    taesd_kwargs,
)
from model_build.vae_decoder import MODEL_TAESD_DIR, VaeDecoderOptions, model_folder_of

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "model_build" / "reference" / "weights"


def _model(folder: Path, vae: dict | None = None, unet: dict | None = None) -> Path:
    (folder / "vae").mkdir(parents=True)
    (folder / "unet").mkdir()
    (folder / "model_index.json").write_text("{}")
    vae_config = {
        "_class_name": "AutoencoderKL",
        "block_out_channels": [128, 256, 512, 512],
        "latent_channels": 4,
        "scaling_factor": 0.18215,
    }
    (folder / "vae" / "config.json").write_text(json.dumps({**vae_config, **(vae or {})}))
    unet_config = {"in_channels": 4, "sample_size": 64, "time_cond_proj_dim": 256}
    (folder / "unet" / "config.json").write_text(json.dumps({**unet_config, **(unet or {})}))
    return folder


def test_full_size_vae_gets_taesds_own_decoder(tmp_path):
    facts = check_model(_model(tmp_path / "m"))
    assert (facts.scale_factor, facts.image_size, facts.guidance_scale) == (8, 512, 8.0)
    assert facts.prompts_name == "calibration" and not facts.reference
    recipe = architecture(DecoderRecipe(), facts)
    assert (recipe.channels, recipe.blocks, recipe.crop) == (64, (3, 3, 3, 1), 16)
    kwargs = taesd_kwargs(recipe, facts)
    assert kwargs["decoder_block_out_channels"] == (64, 64, 64, 64)
    assert kwargs["latent_channels"] == 4 and kwargs["upsampling_scaling_factor"] == 2


def test_reference_model_gets_a_small_decoder_of_its_scale_and_latents():
    facts = check_model(REFERENCE)
    assert facts.reference and facts.prompts_name == "reference-domain training captions"
    assert (facts.image_size, facts.scale_factor, facts.latent_channels) == (64, 8, 4)
    # The gate's captions, held-out combinations among them (the seeds differ from training's).
    assert set(facts.eval_prompts) - set(facts.prompts)
    recipe = architecture(DecoderRecipe(), facts)
    assert (recipe.channels, recipe.blocks, recipe.crop) == (32, (1, 1, 1, 1), 8)
    # Options given are kept.
    assert architecture(DecoderRecipe(channels=24), facts).channels == 24


def test_other_latents_and_scale_factors_follow_the_vae(tmp_path):
    facts = check_model(
        _model(
            tmp_path / "m",
            vae={"latent_channels": 16, "block_out_channels": [64, 64, 64]},
            unet={"in_channels": 16},
        )
    )
    recipe = architecture(DecoderRecipe(), facts)
    kwargs = taesd_kwargs(recipe, facts)
    assert facts.scale_factor == 4 and kwargs["latent_channels"] == 16
    assert len(kwargs["decoder_block_out_channels"]) == 3


@pytest.mark.parametrize(
    ("vae", "unet", "message"),
    [
        ({"_class_name": "AutoencoderTiny"}, None, "distills an AutoencoderKL decoder"),
        ({"block_out_channels": []}, None, "lacks block_out_channels"),
        (None, {"in_channels": 9}, "in_channels=9 latents, the VAE takes latent_channels=4"),
    ],
)
def test_a_model_that_does_not_fit_is_refused_naming_the_field(tmp_path, vae, unet, message):
    with pytest.raises(BuildInputError, match=re.escape(message)):
        check_model(_model(tmp_path / "m", vae=vae, unet=unet))


def test_missing_model_parts_are_refused_with_the_fix(tmp_path):
    with pytest.raises(BuildInputError, match=r"not a folder.*huggingface-cli download"):
        check_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildInputError, match=r"no model_index\.json"):
        check_model(tmp_path / "empty")
    model = _model(tmp_path / "m")
    (model / "vae" / "config.json").unlink()
    with pytest.raises(BuildInputError, match=r"vae/config\.json \(the model's VAE config\)"):
        check_model(model)


def test_blocks_must_match_the_vae_stages(tmp_path):
    facts = check_model(_model(tmp_path / "m"))
    with pytest.raises(BuildInputError, match=r"blocks=\(1, 1\) has 2 stages.*give 4"):
        architecture(DecoderRecipe(blocks=(1, 1)), facts)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (DecoderRecipe(steps=0), "steps=0 must be at least 1"),
        (DecoderRecipe(lr=0.0), "lr=0.0 must be above 0"),
        (DecoderRecipe(render_steps=()), "render_steps=() must be"),
        (DecoderRecipe(channels=0), "channels=0 must be at least 1"),
        (DecoderRecipe(encoded_per_scene=-1), "encoded_per_scene=-1"),
    ],
)
def test_bad_recipe_values_name_the_field(recipe, message):
    with pytest.raises(BuildInputError, match=re.escape(message)):
        recipe.check()


def test_out_must_be_new_unless_resuming_its_own_run(tmp_path):
    recipe = DecoderRecipe(channels=32, blocks=(1, 1, 1, 1))
    check_out(tmp_path / "new", recipe, threads=2, resume=False)
    with pytest.raises(BuildInputError, match=r"holds no run.*without --resume"):
        check_out(tmp_path / "new", recipe, threads=2, resume=True)
    run = tmp_path / "run"
    (run / ".training").mkdir(parents=True)
    record = {"recipe": json.loads(json.dumps(recipe.__dict__)), "threads": 2}
    (run / ".training" / "recipe.json").write_text(json.dumps(record))
    with pytest.raises(BuildInputError, match="pass --resume to continue it"):
        check_out(run, recipe, threads=2, resume=False)
    check_out(run, recipe, threads=2, resume=True)
    with pytest.raises(BuildInputError, match="another recipe"):
        check_out(run, DecoderRecipe(channels=32, blocks=(1, 1, 1, 1), steps=7), 2, resume=True)
    with pytest.raises(BuildInputError, match="pass --threads 2"):
        check_out(run, recipe, threads=1, resume=True)


def test_cli_refuses_bad_blocks_and_a_missing_model_with_exit_2(tmp_path, capsys):
    code = cli.main(["train-decoder", str(REFERENCE), str(tmp_path / "o"), "--blocks", "a,b"])
    assert code == 2 and "--blocks 'a,b' is not comma-separated" in capsys.readouterr().err
    code = cli.main(["train-decoder", str(tmp_path / "none"), str(tmp_path / "o")])
    assert code == 2 and "is not a folder" in capsys.readouterr().err


def test_vae_decoder_taesd_takes_the_models_own_decoder(tmp_path):
    model = _model(tmp_path / "m")
    plain = VaeDecoderOptions(kind="taesd")
    assert plain.with_model_taesd(model) is plain  # none trained: check() asks for --taesd
    with pytest.raises(BuildInputError, match="lcm-build train-decoder MODEL MODEL/taesd"):
        plain.with_model_taesd(model).check()
    (model / MODEL_TAESD_DIR).mkdir()
    (model / MODEL_TAESD_DIR / "config.json").write_text("{}")
    own = plain.with_model_taesd(model)
    assert own.taesd == str(model / MODEL_TAESD_DIR)
    own.check()
    given = VaeDecoderOptions(kind="taesd", taesd="madebyollin/taesd")
    assert given.with_model_taesd(model).taesd == "madebyollin/taesd"  # --taesd wins
    assert VaeDecoderOptions().with_model_taesd(model).taesd is None  # other kinds: unchanged


def test_the_ir_leads_back_to_its_local_model_folder(tmp_path):
    model = _model(tmp_path / "m")
    ir = tmp_path / "ir"
    ir.mkdir()
    assert model_folder_of(ir) is None
    (ir / "manifest.json").write_text(json.dumps({"source": {"kind": "local", "path": str(model)}}))
    assert model_folder_of(ir) == model
    (ir / "manifest.json").write_text(json.dumps({"source": {"kind": "hub", "id": "a/b"}}))
    assert model_folder_of(ir) is None


def test_the_shipped_reference_decoder_is_where_the_build_looks():
    own = VaeDecoderOptions(kind="taesd").with_model_taesd(REFERENCE)
    assert own.taesd == str(REFERENCE / MODEL_TAESD_DIR)
    config = json.loads((REFERENCE / MODEL_TAESD_DIR / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny" and config["latent_channels"] == 4
    assert len(config["decoder_block_out_channels"]) == 4  # 8x, as the reference VAE
