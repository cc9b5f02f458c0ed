"""bench/pipeline/gates.py: which reference build each benchmark path is judged by."""

from __future__ import annotations

import pytest

from bench.pipeline import gates


def test_each_gated_path_names_its_own_reference_build_folder() -> None:
    names = {key: gates.folder_name(options) for key, options in gates.GATED.items()}
    assert names["ov_int8_worker"] == "reference.int8"
    assert names["ov_int8_tome"] == "reference.int8.tome0.5"
    assert names["ov_int8_tome_taesd"] == "reference.int8.tome0.5.vae-taesd"
    assert len(set(names.values())) == len(names)


def test_gates_option_takes_all_none_or_known_keys() -> None:
    assert gates.parse_keys("all") == tuple(gates.GATED)
    assert gates.parse_keys("none") == ()
    assert gates.parse_keys("ov_int8_tome, ov_int8_vae_taesd") == (
        "ov_int8_tome",
        "ov_int8_vae_taesd",
    )
    with pytest.raises(ValueError, match=r"unknown path.*ov_int8_fast.*use all, none"):
        gates.parse_keys("ov_int8_fast")


def test_verdicts_are_the_reference_builds_and_none_where_no_gate_ran() -> None:
    paths = {"pytorch_fp32": {}, "ov_int8_tome": {}, "ov_int8_vae_int8": {}}
    gates.verdicts(paths, {"ov_int8_tome": {"passed": True}, "ov_int8_vae_int8": {"passed": 0}})
    assert paths == {
        "pytorch_fp32": {"gate_passed": None},
        "ov_int8_tome": {"gate_passed": True},
        "ov_int8_vae_int8": {"gate_passed": False},
    }
