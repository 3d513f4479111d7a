"""The template budget: every render is bounded in time and size, whatever the template does,
and what templates are for (dates, names, small loops and filters) keeps working."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime

import pytest

from reconciler.workspace.templating import (
    DEFAULT_NAME,
    Limits,
    TemplateFailed,
    render_name,
    render_sql,
)
from tests.conftest import cli, profile

AS_OF = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)


def name(template: str, **kw) -> str:
    return render_name(
        template,
        as_of=AS_OF,
        timezone="UTC",
        date_created=date(2024, 6, 1),
        activation="act",
        segments=["vip", "lapsed"],
        **kw,
    )


# Each would hang the runner or build a string of a gigabyte or more without the budget.
HUGE = [
    "{{ 'x'.ljust(10**9) }}",
    "{{ 'x'.rjust(10**9) }}",
    "{{ 'x'.center(10**9) }}",
    "{{ 'x'.zfill(10**9) }}",
    "{{ 'x'|center(10**9) }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ '{:{}}'.format(1, 10**9) }}",
    "{{ '{a:>{w}}'.format_map({'a': 1, 'w': 10**9}) }}",
    "{{ '{0:{1}}'.format('x', '1000000000') }}",
    "{{ '{0:{1[0]}}'.format('x', [10**9]) }}",
    "{{ '{0:{1[w]}}'.format('x', {'w': '1000000000'}) }}",
    "{{ '%1000000000d'|format(1) }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ '%.1000000000f' % 1 }}",
    "{{ ((9**64)**64)**64 }}",
    "{{ 'a' * 10**10 }}",
    "{{ ['x' * 100000] * 100000 }}",
    "{% set a = 'x' * 100000 %}{{ a ~ a }}",
    "{% set a = 'x' * 100000 %}{{ a + a }}",
    "{% set a = 'x' * 60000 %}{{ [a, a] }}",
    "{% set a = 'x' * 60000 %}{{ (a, a) }}",
    "{% set a = 'x' * 60000 %}{{ {'k': a, 'l': a} }}",
    "{{ ('x' * 100000).replace('x', 'yy') }}",
    "{{ ('x' * 100000)|replace('x', 'x' * 100000) }}",
    "{{ range(100000)|map('string')|join('x' * 1000) }}",
    "{{ ('x' * 1000).join(range(100000)|map('string')) }}",
    "{{ [1]|batch(10**9, 'x')|list }}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ ('x\\n' * 50000)|indent(50000) }}",
]


@pytest.mark.parametrize("payload", HUGE)
def test_values_too_large_are_refused_before_they_are_built(payload):
    with pytest.raises(TemplateFailed, match="too (large|long)"):
        render_sql(f"SELECT customer_id FROM profiles WHERE x = '{payload}'", AS_OF, "UTC")
    with pytest.raises(TemplateFailed, match="too (large|long)"):
        name(payload)


@pytest.mark.parametrize(
    "payload",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in [1] * 50000 %}{% endfor %}{% endfor %}",
        "{% for i in range(3) recursive %}{{ loop(range(100000)) }}{% endfor %}",
    ],
)
def test_loops_are_bounded(payload):
    with pytest.raises(TemplateFailed, match="loops run more than 1,000 times|builds more than"):
        name(payload, limits=Limits(iterations=1_000))


def test_output_is_bounded_also_when_a_macro_or_set_block_captures_it():
    limits = Limits(output=10_000)
    for payload in (
        "{% for i in range(100000) %}{{ 'x' * 999 }}{% endfor %}",
        "{% for i in range(100000) %}literal text{% endfor %}",
        "{% macro m() %}{% for i in range(100000) %}xxxxxxxxxx{% endfor %}{% endmacro %}"
        "{% set y = m() %}",
        "{% set y %}{% for i in range(100000) %}xxxxxxxxxx{% endfor %}{% endset %}",
    ):
        with pytest.raises(TemplateFailed, match="renders more than 10,000 characters"):
            name(payload, limits=limits)


def test_everything_built_in_one_render_is_bounded():
    payload = "{% for i in range(1000) %}{% set s = 'x' * 1000 %}{% endfor %}"
    with pytest.raises(TemplateFailed, match="builds more than 100,000 characters"):
        name(payload, limits=Limits(built=100_000))


def test_the_deadline_is_checked_between_steps():
    ticks = itertools.count()
    # a clock that moves one second per reading: the deadline passes after a few steps
    limits = Limits(seconds=5, clock=lambda: float(next(ticks)))
    with pytest.raises(TemplateFailed, match="takes longer than 5 seconds to render"):
        name("{% for i in range(100) %}{{ i }}{% endfor %}", limits=limits)


@pytest.mark.parametrize(
    "payload",
    [
        "{{ lipsum(1000000) }}",
        "{{ cycler(1, 2).next() }}",
        "{{ joiner(',')() }}",
        "{{ namespace(a=1) }}",
        "{{ 'x'.translate({120: 'y'}) }}",
        "{{ 'a'.expandtabs(10**9) }}",
        "{{ (1).to_bytes(10**9, 'big') }}",
        "{{ 'abc'|wordwrap(1) }}",
        "{{ [1, 2]|random }}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ],
)
def test_unbounded_helpers_are_gone(payload):
    with pytest.raises(TemplateFailed, match="template error"):
        name(payload)


def test_what_templates_are_for_keeps_working():
    assert name(DEFAULT_NAME) == "2024-06-01 vip, lapsed"
    assert name("{{ activation|upper }} {{ today }}") == "ACT 2024-06-15"
    assert (
        name(
            "{% for s in segments %}{{ loop.index }}{{ s|title }}{% if not loop.last %}/{% endif %}{% endfor %}"
        )
        == "1Vip/2Lapsed"
    )
    assert render_sql(
        "{{ '{:>5}'.format('x') }}|{{ '%03d'|format(7) }}|{{ 'x'.ljust(3) }}|", AS_OF, "UTC"
    ) == ("    x|007|x  |")
    assert name("{{ segments|join('+')|replace('+', ' & ') }}") == "vip & lapsed"
    assert (
        name("{% set x %}a{{ 1 + 1 }}{% endset %}{{ x }} {{ dict(k=1)|tojson }}") == 'a2 {"k": 1}'
    )
    assert name("{% macro f(a) %}<{{ a }}>{% endmacro %}{{ f(segments[0]) }}") == "<vip>"
    assert render_sql("{{ days_ago(7) }} {{ range(3)|sum }}", AS_OF, "UTC") == "DATE '2024-06-08' 3"


@pytest.mark.parametrize(
    "payload",
    [
        "VIP {{ dict(a=1).items }}",
        "VIP {{ range }}",
        "{{ (segments|first).format_map }}",
        "{{ [range] }}",
        "{{ range|string }}",
    ],
)
def test_a_name_that_would_print_a_memory_address_is_refused(payload):
    """Its text changed on every run (``<built-in method items of dict object at 0x7f...>``):
    every plan renamed the audience, and exit code 2 forever."""
    with pytest.raises(TemplateFailed, match="changes from run to run"):
        name(payload)


@pytest.mark.parametrize("payload", ["a\nb", "a\x1b[31mred", "a\x00", "a\u202eb", "{{ 'a\\x07' }}"])
def test_audience_names_hold_no_control_characters(payload):
    with pytest.raises(TemplateFailed, match="the audience name holds a control character"):
        name(payload)


@pytest.mark.parametrize(
    "payload", ["VIP\u200b", "\ufeffVIP", "V\xadIP", "VIP\u200e", "{{ 'VIP\u2060' }}"]
)
def test_audience_names_hold_no_invisible_characters(payload):
    """ "VIP\u200b" and "VIP" look the same in Ads Manager and in a plan."""
    with pytest.raises(TemplateFailed, match="invisible character"):
        name(payload)


def test_joiners_stay_in_audience_names():
    assert name("Families \U0001f468\u200d\U0001f469\u200d\U0001f467") == (
        "Families \U0001f468\u200d\U0001f469\u200d\U0001f467"
    )


def test_a_hanging_name_template_fails_validate_with_its_file(workspace):
    ws = workspace(
        {"act": "segments: [seg-a]\ndestination: sandbox\nname: \"{{ 'x'.ljust(10**9) }}\"\n"},
        profiles=[profile(1, a=True)],
    )
    res = cli(ws, "validate")
    assert res.exit_code == 1
    assert "activations/act.yaml:3: name: a value in the template is too large" in res.stderr
