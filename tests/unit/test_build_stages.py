"""quantize_artifact's stages hand frozen records on; none changes what it was given."""

from model_build.build import Candidate, _quantization_record
from model_build.vae_decoder import VaeDecoderOptions

UNCHANGED = ["text_encoder", "vae_decoder", "vae_encoder", "tokenizer"]


def test_a_vae_decoder_of_its_own_leaves_the_unchanged_parts():
    candidate = Candidate(quantization={"method": "x", "unchanged_parts": list(UNCHANGED)})
    record = _quantization_record(candidate, VaeDecoderOptions(kind="int8"))
    assert record is not None
    assert record["unchanged_parts"] == ["text_encoder", "vae_encoder", "tokenizer"]
    assert candidate.quantization == {"method": "x", "unchanged_parts": UNCHANGED}
    assert _quantization_record(candidate, VaeDecoderOptions()) == candidate.quantization


def test_candidate_manifest_fields():
    assert Candidate(quantization=None).manifest_fields() == {
        "quantization": None,
        "fake_quantize_count": 0,
    }
