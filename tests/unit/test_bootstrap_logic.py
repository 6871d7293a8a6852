from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocks.dotenv import EnvFileError, conflicts, parse_env, render_env
from blocks.scratch import drill_override
from flows.bootstrap import HostRequirements, assess_resources
from flows.shared import Status

FAILED, OK, WARNING = Status.FAILED, Status.OK, Status.WARNING

keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True)
values = st.from_regex(r"[A-Za-z0-9_.:/-]{0,20}", fullmatch=True)


def test_render_env_keeps_lines_order_and_comments():
    current = "# sentry\nSENTRY_SECRET_KEY=abc\nOTHER=1\n"
    out = render_env(current, {"OTHER": "2", "NEW": "x"})
    assert out == "# sentry\nSENTRY_SECRET_KEY=abc\nOTHER=2\nNEW=x\n"


@given(st.dictionaries(keys, values), st.dictionaries(keys, values))
def test_render_env_sets_wanted_keeps_the_rest_and_is_idempotent(existing, wanted):
    current = "".join(f"{k}={v}\n" for k, v in existing.items())
    out = render_env(current, wanted)
    assert parse_env(out) == {**existing, **wanted}
    assert render_env(out, wanted) == out  # a second bootstrap changes nothing


def test_env_reads_export_lines_quotes_and_comments_like_compose():
    text = '# comment\nexport SENTRY_SECRET_KEY=abc\nA=\'x # y\'\nB="q\\"z"\nC=v # note\nA=2\n'
    assert parse_env(text) == {"SENTRY_SECRET_KEY": "abc", "A": "2", "B": 'q"z', "C": "v"}
    # an `export` line is the same key: rewritten in place, never appended a second time
    out = render_env("export SENTRY_SECRET_KEY=abc\n", {"SENTRY_SECRET_KEY": "abc"})
    assert out == "SENTRY_SECRET_KEY=abc\n"


def test_env_refuses_what_would_inject_lines_or_read_back_differently():
    with pytest.raises(EnvFileError, match="line break"):
        render_env("", {"A": "x\nSENTRY_SECRET_KEY=evil"})
    with pytest.raises(EnvFileError, match="not a variable name"):
        render_env("", {"A=B": "x"})
    assert render_env("", {"P": "a$b c"}) == "P='a$b c'\n"  # no compose interpolation
    assert parse_env(render_env("", {"P": "a$b c"})) == {"P": "a$b c"}


def test_conflicts_name_kept_keys_whose_value_would_change():
    have = {"SENTRY_DB_PASSWORD": "old", "SENTRY_SECRET_KEY": "k"}
    want = {"SENTRY_DB_PASSWORD": "new", "SENTRY_SECRET_KEY": "k", "X": "1"}
    assert conflicts(have, want, {"SENTRY_DB_PASSWORD", "SENTRY_SECRET_KEY"}) == [
        "SENTRY_DB_PASSWORD"
    ]


def test_resources_fail_below_minimum_warn_below_recommended():
    guide = HostRequirements()
    verdict = {r.name: r.status for r in assess_resources(2, 24.0, 80.0, guide)}
    assert verdict == {"cpu": FAILED, "memory": OK, "disk": WARNING}
    small = HostRequirements(min_cpus=1, min_memory_gb=1, min_disk_gb=1)
    assert {r.status for r in assess_resources(2, 24.0, 80.0, small)} == {WARNING, OK}


def test_drill_override_pins_each_service_image():
    text = drill_override({"sentry": "getsentry/sentry:24.1.0", "sentry-postgres": "postgres:15"})
    assert "  sentry:\n    image: getsentry/sentry:24.1.0" in text
    assert "  sentry-postgres:\n    image: postgres:15" in text


def test_same_host_drill_of_a_layout_with_external_volumes_is_refused():
    from blocks.scratch import DrillError, DrillStack, scratch_of
    from tests.unit.test_sentry_host_block import make_host

    with pytest.raises(DrillError, match="external volumes"):
        scratch_of(make_host(layout="self-hosted"), None, DrillStack())
    scratch = scratch_of(make_host(project_name="prod", web_port=9000), None, DrillStack())
    assert scratch.project_name == "prod-drill" and scratch.web_port == 9100
    assert scratch.project_dir == "/opt/sentry-drill"
