"""`lcm` refuses bad option values in argparse, saying what the option allows."""

from __future__ import annotations

import pytest

from lcm_fleet.contract import SEED_MAX
from producer.cli import _parser


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seed", "1.5"], f"argument --seed: '1.5' is not an integer in 0..{SEED_MAX}"),
        (["--seed", "-1"], f"argument --seed: '-1' is not an integer in 0..{SEED_MAX}"),
        (["--seed", "True"], f"argument --seed: 'True' is not an integer in 0..{SEED_MAX}"),
        (["--steps", "9"], "argument --steps: '9' is not an integer in 1..8"),
        (["--guidance-scale", "x"], "argument --guidance-scale: 'x' is not a number in 1..20"),
        (["--guidance-scale", "nan"], "argument --guidance-scale: 'nan' is not a number in 1..20"),
        (
            ["--width", "4096", "--height", "64"],
            "argument --width: '4096' is not an integer in 64..2048 (a multiple of 8)",
        ),
        (["--num-images", "0"], "argument --num-images: '0' is not an integer in 1..8"),
        (["--timeout-s", "-5"], "argument --timeout-s: '-5' is not a number in 0..604800"),
    ],
)
def test_submit_option_errors_carry_the_allowed_range(capsys, argv, expected):
    assert _error(capsys, "submit", "a cat", *argv) == f"lcm submit: error: {expected}"


def test_a_long_bad_value_is_quoted_short(capsys):
    line = _error(capsys, "submit", "a cat", "--seed", "9" * 100_000)
    assert line.endswith(f"... (100000 characters) is not an integer in 0..{SEED_MAX}")
    assert len(line) < 200


def test_submit_file_defaults_and_from_line(capsys):
    line = _error(capsys, "submit-file", "p.jsonl", "--from-line", "0")
    assert line == (
        "lcm submit-file: error: argument --from-line: '0' is not an integer in 1..1000000000"
    )
    line = _error(capsys, "submit-file", "p.jsonl", "--steps", "2.5")
    assert line.endswith("argument --steps: '2.5' is not an integer in 1..8")


def test_good_values_parse_to_numbers():
    args = _parser().parse_args(
        ["submit", "a cat", "--seed", str(SEED_MAX), "--guidance-scale", "7.5", "--width", "64"]
    )
    assert (args.seed, args.guidance_scale, args.width) == (SEED_MAX, 7.5, 64)
