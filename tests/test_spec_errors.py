"""Every bad experiment file gets one line naming the file, field (and line) and value; exit status 2."""

from __future__ import annotations

import pytest

GOOD = """\
name: ok
prompt: "a {{ age }} chief"
axes:
  age: [old, young]
seeds: [0, 1]
"""


def assert_one_line_error(res, *needles: str) -> None:
    assert res.code == 2, (res.code, res.out, res.err)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


CASES = [
    ("malformed-yaml", "name: x\nprompt: [unclosed\n", ["exp.yaml", "malformed YAML", "line"]),
    ("unknown-field", GOOD + "guidance: 7\n", ["exp.yaml", "guidance", "unknown field", "did you mean 'guidance_scale'", "line 6"]),
    ("unknown-field-typo", GOOD + "sedes: [1]\n", ["unknown field 'sedes'", "did you mean 'seeds'"]),
    ("wrong-type-steps", GOOD + "steps: twenty\n", ["exp.yaml: steps", "positive integer", "'twenty'", "line 6"]),
    ("wrong-type-bool", GOOD + "attention_slicing: maybe\n", ["attention_slicing", "true or false", "'maybe'"]),
    ("wrong-type-axes", "prompt: hi\naxes: [a, b]\n", ["axes", "mapping of axis name"]),
    ("empty-axis", "prompt: '{{ age }}'\naxes:\n  age: []\n", ["axes.age", "empty", "line 3"]),
    ("empty-setting-list", GOOD + "steps: []\n", ["steps", "empty list"]),
    ("zip-unequal", GOOD + "scheduler: [PNDM, DDIM]\nsteps: [50, 20, 10]\nzip: [[scheduler, steps]]\n",
     ["zip[0]", "equal lengths", "scheduler has 2", "steps has 3"]),
    ("zip-unknown-axis", GOOD + "zip: [[age, colour]]\n", ["zip[0]", "unknown axis 'colour'", "known axes: age"]),
    ("axis-collides-with-setting", "prompt: '{{ steps }}'\naxes:\n  steps: [1, 2]\n", ["axes.steps", "collides", "line 3"]),
    ("undefined-variable", "prompt: 'a {{ colour }} chief'\naxes:\n  age: [old]\n",
     ["exp.yaml: prompt", "undefined template variable 'colour'", "known axes: age, seed"]),
    ("sandbox", "prompt: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"\n",
     ["exp.yaml: prompt", "Python internals"]),
    ("seed-negative", GOOD.replace("seeds: [0, 1]", "seeds: [0, -1]"), ["seeds[1]", "between 0 and 2**63-1", "-1"]),
    ("seed-too-big", GOOD.replace("seeds: [0, 1]", "seeds: [9223372036854775808]"), ["seeds[0]", "9223372036854775808"]),
    ("size-not-multiple-of-8", GOOD + "size: 513x512\n", ["exp.yaml: size", "multiples of 8", "513x512"]),
    ("width-not-positive", GOOD + "width: 0\nheight: 64\n", ["width", "positive multiple of 8", "0"]),
    ("bad-name", GOOD.replace("name: ok", "name: 'my experiment/1'"), ["exp.yaml: name", "[A-Za-z0-9._-]+", "'my experiment/1'"]),
    ("name-escapes-folder", GOOD.replace("name: ok", "name: '..'"), ["exp.yaml: name", "'..'"]),
    ("unknown-scheduler", GOOD + "scheduler: Eulr\n", ["scheduler", "unknown scheduler 'Eulr'", "did you mean 'Euler'", "known:"]),
    ("bad-dtype", GOOD + "dtype: int8\n", ["dtype", "float32, float16, bfloat16", "'int8'"]),
    ("duplicate-key", GOOD + "steps: 2\nsteps: 3\n", ["duplicate key 'steps'", "line 7"]),
    ("grid-unknown-axis", GOOD + "grid: {rows: colour, cols: seed}\n", ["grid.rows", "unknown axis 'colour'"]),
    ("exclude-unknown", GOOD + "exclude: [{colour: red}]\n", ["exclude[0].colour", "unknown axis or setting"]),
    ("bundle-unknown-setting", "prompt: hi\naxes:\n  setup: {fast: {stepz: 2}}\n", ["axes.setup.fast.stepz", "did you mean 'steps'"]),
    ("missing-prompt", "name: x\n", ["prompt", "missing"]),
    ("duplicate-seed", GOOD.replace("seeds: [0, 1]", "seeds: [1, 1]"), ["seeds[1]", "listed twice"]),
    ("template-syntax", "prompt: 'a {{ age '\naxes:\n  age: [old]\n", ["exp.yaml: prompt", "template error"]),
]


@pytest.mark.parametrize("text,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_gets_one_line(cli, write_yaml, text, needles):
    path = write_yaml(text)
    assert_one_line_error(cli("expand", path), *needles)


def test_missing_file(cli, tmp_path):
    assert_one_line_error(cli("expand", tmp_path / "nope.yaml"), "nope.yaml", "no such file")


def test_plan_over_limit_is_refused_with_its_size(cli, write_yaml):
    path = write_yaml("prompt: '{{ a }}{{ b }}'\naxes:\n  a: {start: 0}\n".replace("{start: 0}", "[1,2,3,4,5,6,7,8,9,10]")
                      + "  b: [1,2,3,4,5,6,7,8,9,10]\nseeds: '0-99'\n")
    res = cli("expand", path, "--max-runs", "9999")
    assert_one_line_error(res, "10000 runs", "limit of 9999", "--max-runs")
    assert cli("expand", path, "--max-runs", "10000", "--json").code == 0


def test_good_file_expands(cli, write_yaml):
    res = cli("expand", write_yaml(GOOD))
    assert res.code == 0, res.err
    assert res.out.startswith("ok: 4 runs")


def test_lone_surrogate_escape_is_one_line(cli, write_yaml):
    path = write_yaml('prompt: "a \\ud83d dragon"\n')
    assert_one_line_error(cli("expand", path), "exp.yaml: prompt", "lone UTF-16 surrogate")
