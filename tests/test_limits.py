"""Issue 13, problem 4: small inputs with unbounded cost are refused with one line naming file and field."""

from __future__ import annotations

import time

import pytest

from tests.test_spec_errors import assert_one_line_error
from tracker import limits

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))


def _expand(cli, write_yaml, text: str):
    started = time.monotonic()
    res = cli("expand", write_yaml(text))
    return res, time.monotonic() - started


@pytest.mark.parametrize("text, needles", [
    pytest.param("prompt: hi\nlaughs:\n  " + BILLION_LAUGHS.replace("\n", "\n  "), ["exp.yaml", "expands to more than", "aliases"],
                 id="billion-laughs"),
    pytest.param("prompt: hi\nx: " + "[" * 2000 + "]" * 2000 + "\n", ["exp.yaml", "more than 64 deep"], id="deep-nesting"),
    pytest.param("prompt: hi\nseeds: {start: 0, count: 99999999}\n", ["exp.yaml: seeds.count", "99999999", "at most 1000000"],
                 id="seed-count"),
    pytest.param("prompt: \"{{ '{0:>1000000000}'.format(1) }}\"\n", ["exp.yaml: prompt", "exceeds a limit", "format spec"],
                 id="format-width"),
    pytest.param("prompt: \"{{ 'x' * 1000000000 }}\"\n", ["exp.yaml: prompt", "exceeds a limit"], id="string-repeat"),
    pytest.param("prompt: \"{{ 'x'|center(1000000000) }}\"\n", ["exp.yaml: prompt", "center"], id="filter-width"),
    pytest.param("prompt: \"{{ '%1000000000d' % 1 }}\"\n", ["exp.yaml: prompt", "% format"], id="percent-width"),
    pytest.param("prompt: \"{{ ('ab' * 100).replace('a', 'x' * 10000) }}\"\n", ["exp.yaml: prompt", "characters"],
                 id="replace-growth"),
    pytest.param("name: " + "n" * 300 + "\nprompt: hi\n", ["exp.yaml: name", "300 characters", "at most 100"], id="long-name"),
    pytest.param("prompt: 'a {red|green} car'\nvariants: {sample: 100000000}\n",
                 ["exp.yaml: variants.sample", "100000000", f"at most {limits.MAX_VARIANTS}"], id="variant-sample"),
])
def test_costly_input_is_one_line_and_fast(cli, write_yaml, text, needles):
    res, seconds = _expand(cli, write_yaml, text)
    assert_one_line_error(res, *needles)
    assert "RecursionError" not in res.err and "MemoryError" not in res.err


def test_nested_loops_stop_at_the_render_time_limit(cli, write_yaml, monkeypatch):
    monkeypatch.setattr(limits, "MAX_RENDER_SECONDS", 0.3)
    text = "prompt: \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x\"\n"
    res, seconds = _expand(cli, write_yaml, text)
    assert_one_line_error(res, "exp.yaml: prompt", "more than 0.3 s")


def test_loop_iterations_are_counted_across_loops(cli, write_yaml, monkeypatch):
    monkeypatch.setattr(limits, "MAX_LOOP_ITERATIONS", 5000)
    text = "prompt: \"{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}x\"\n"
    res, _ = _expand(cli, write_yaml, text)
    assert_one_line_error(res, "exp.yaml: prompt", "more than 5000 iterations")


def test_file_too_large_is_refused_before_parsing(cli, tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("prompt: hi\n" + "# padding\n" * (limits.YAML_MAX_BYTES // 10 + 10))
    assert_one_line_error(cli("expand", p), "big.yaml", "at most")


def test_bounded_templates_still_render_ordinary_prompts(cli, write_yaml):
    res = cli("expand", write_yaml(
        "prompt: \"{{ '{:>4}'.format(seed) }} {{ 'ab' * 3 }} {{ '%03d' % seed }} {% for i in range(3) %}{{ i }}{% endfor %}\"\n"
        "seeds: [7]\n"))
    assert res.code == 0, res.err
    assert "7 ababab 007 012" in res.out


def _doubled(step: str) -> str:
    return "{% set a = 'x' * 20000 %}" + step * 12 + "{{ a|length }}"


@pytest.mark.parametrize("template", [
    pytest.param(_doubled("{% set a = a ~ a %}"), id="tilde-doubling"),
    pytest.param(_doubled("{% set a %}{{ a }}{{ a }}{% endset %}"), id="set-block-doubling"),
    pytest.param("{% macro m(s) %}{{ s }}{{ s }}{{ s }}{% endmacro %}{{ m(m(m('x' * 20000))) }}", id="macro-output"),
    pytest.param("{% set a = 'x' * 20000 %}{% for i in range(5000) %}{{ a }}{% endfor %}", id="prompt-output"),
])
def test_output_is_bounded_while_it_grows(template):
    """``~``, set blocks, macros and the prompt itself build no string past the limit (a 12-fold doubling is
    80 MB; 30 would be terabytes): the render stops at the first piece that crosses it."""
    import tracemalloc

    from tracker.prompts import templating
    from tracker.errors import SpecError

    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="exceeds a limit: the template builds text of"):
            templating.render(template, {}, "exp.yaml", "prompt", 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # the limit is 20,000 characters; without the bound 80-100 MB


def test_lipsum_is_bounded_before_it_generates():
    from tracker.prompts import templating
    from tracker.errors import SpecError

    started = time.monotonic()
    with pytest.raises(SpecError, match=r"lipsum\(3000, max=100\) asks for more than"):
        templating.render("{{ lipsum(3000) }}", {}, "exp.yaml", "prompt", 3)
    assert time.monotonic() - started < 1
    assert templating.render("{{ lipsum(1, False, 3, 4)|length > 0 }}", {}, "exp.yaml", "prompt", 3) == "True"


def test_a_templates_axis_product_is_refused_before_rendering_it(cli, write_yaml):
    """A prompt using three 1000-value axes was rendered 10**9 times at parse time (to find its variants),
    hours before the plan's size limit could say anything."""
    values = "[" + ", ".join(f"v{i}" for i in range(1000)) + "]"
    text = f"prompt: \"{{{{ a }}}} {{{{ b }}}} {{{{ c }}}}\"\naxes:\n  a: {values}\n  b: {values}\n  c: {values}\n"
    res, seconds = _expand(cli, write_yaml, text)
    assert_one_line_error(res, "exp.yaml: prompt", "a, b, c make 1000000000 combinations", "at most 1000000")
    assert seconds < 30
