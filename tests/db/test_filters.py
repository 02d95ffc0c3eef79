"""The `--where` / `--order-by` compiler on one small database built once on SQLite and once on PostgreSQL (so
`make mutation` judges both dialects' branches): each filter selects exactly the jobs it names, values of every
JSON type are compared as their type, and a bad filter is refused with a message that points at the spot."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest

from tests.support import postgres_database
from tlq.db import Database, queries, results
from tlq.db.filters import FieldResolver, FilterError, compile_where, field_names, tokenize

# name: (params, tags, status, priority, seconds run, created day, val_acc per step, epochs)
JOBS = {
    "p": (
        {"epochs": 3, "lr": 0.01, "aug": True, "note": "3", "batch-size": 8},
        {"team": "x", "n": 3, "home town": "Oslo"},
        "succeeded",
        0,
        30,
        1,
    ),
    "q": ({"epochs": 10, "lr": 0.5, "aug": False, "note": None}, {"team": "y"}, "failed", 5, 90, 2),
    "r": ({"epochs": "many", "lr": "fast"}, {}, "queued", -1, None, 3),
    "s": ({"epochs": 2.5, "aug": "yes"}, {"team": None, 'odd "key"': "o", "back\\slash": "b"}, "succeeded", 2, 60, 4),
}
# (step, value) in the order they were recorded: r's step 2 came before a re-recorded step 1 (a resumed job)
ACC = {"p": [(1, 0.5), (2, 0.7)], "q": [(1, 0.9), (3, 0.6)], "r": [(2, 0.4), (1, 0.3)], "s": [(1, 0.8)]}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('filters') / 'tlq.sqlite'}"
        else:
            request.getfixturevalue("services")
            url = stack.enter_context(postgres_database())
        yield from _filled(Database(url))


def _filled(database):
    database.ensure_schema()
    day = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    with database.session() as session:
        for name, (params, tags, status, priority, seconds, created) in JOBS.items():
            job = queries.create_job(
                session, task="finetune", backbone=f"net-{name}", params=params, tags=tags, name=name, priority=priority
            )
            job.status, job.created_at = status, day + dt.timedelta(days=created)
            if seconds is not None:
                job.started_at = job.created_at
                job.finished_at = job.created_at + dt.timedelta(seconds=seconds)
            for step, value in ACC.get(name, []):
                queries.record_metric(session, job.id, "val_acc", value, step=step, epoch=step)
            if name == "q":  # another metric, recorded last, whose name starts with an X
                queries.record_metric(session, job.id, "Xp", 1.0, step=9)
    yield database
    database.dispose()


def names(database, where=None, order_by=None, tags=None) -> list[str]:
    with database.session() as session:
        jobs, _ = results.search_jobs(session, where, order_by, tags)
        return [job.name for job in jobs]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        # JSON values compare as their own type: 3 the number, never "3" the text
        ("params.epochs = 3", {"p"}),
        ("params.epochs >= 3", {"p", "q"}),
        ("params.epochs < 3", {"s"}),  # 2.5, a real
        ("params.epochs = 'many'", {"r"}),
        ("params.note = '3'", {"p"}),
        ("params.note = 3", set()),
        ("params.aug = true", {"p"}),
        ("params.aug = false", {"q"}),
        ("params.aug = 'yes'", {"s"}),
        ("params.aug != true", {"q"}),  # a text value is not false either
        ("params.lr in (0.01, 0.5)", {"p", "q"}),
        ("params.lr in ('fast')", {"r"}),
        ("param.lr > 0.1", {"q"}),  # param. is params.
        ("tag.team = 'x'", {"p"}),
        ("TAGS.team in ('x', 'y')", {"p", "q"}),
        # missing: an absent key, JSON null, or a NULL column
        ("params.note is null", {"q", "r", "s"}),
        ("params.note is not null", {"p"}),
        ("tags.team is null", {"r", "s"}),
        ("params.aug is null", {"r"}),
        ("Xp is null", {"p", "r", "s"}),
        ("finished is null", {"r"}),
        ("param.note is not null", {"p"}),  # a key that holds text is there, whatever the comparison
        ("tags.n is null", {"q", "r", "s"}),  # a tag that holds a number is there too
        ("tag.n is not null", {"p"}),
        ("params.batch-size = 8", {"p"}),  # a key SQLite's JSON path must quote
        ("params.note like '3%'", {"p"}),
        ("params.lr < 1E3", {"p", "q"}),
        ("params.aug == true", {"p"}),
        ("params.aug <> true", {"q"}),
    ],
)
def test_json_values_compare_as_their_type(database, where, expected):
    assert set(names(database, where)) == expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("val_acc = 0.7", {"p"}),  # the value at the last step, not the best
        ("val_acc = 0.6", {"q"}),  # step 3, after step 1's 0.9
        ("val_acc = 0.4", {"r"}),  # the last step, though recorded before step 1
        ("Xp = 1", {"q"}),
        ("val_acc > 0.65", {"p", "s"}),
        ("epochs = 3", {"q"}),
        ("epochs >= 2", {"p", "q", "r"}),
        ("seconds > 59.9 and seconds < 60.1", {"s"}),
        ("seconds > 30 and seconds <= 90", {"q", "s"}),
        ("priority < 0", {"r"}),
        ("priority <> 0 and priority != 5", {"r", "s"}),
        ("priority == 5", {"q"}),
        ("status = 'succeeded' and not priority = 2", {"p"}),
        ("created >= '2026-11-23'", {"r", "s"}),
        ("created < '2026-11-22T00:00+00:00'", {"p"}),
        ("created > '2026-11-22T13:00+02:00'", {"q", "r", "s"}),  # 11:00 UTC, before q's noon
        ("name not like 'p%' and name not in ('q')", {"r", "s"}),
        ("backbone like 'NET-_'", {"p", "q", "r", "s"}),
        ("not (name = 'p' or name = 'q') and not name = 'r'", {"s"}),
        ("name = 'p' or name = 'q' and priority = 0", {"p"}),
        ("(name = 'p' or name = 'q') and priority = 5", {"q"}),
        ("id >= 1 and job >= 1 and attempts = 0", {"p", "q", "r", "s"}),
        ("group is null and parent is null and worker is null", {"p", "q", "r", "s"}),
        ("created_at >= '2026-11-24' and started_at >= '2026-11-24'", {"s"}),
    ],
)
def test_fields_metrics_and_logic_select_the_right_jobs(database, where, expected):
    assert set(names(database, where)) == expected


def test_order_by_puts_numbers_in_numeric_order_then_text_and_missing_last(database):
    assert names(database, order_by="params.epochs") == ["s", "p", "q", "r"]  # 2.5, 3, 10, then "many"
    assert names(database, order_by="-params.epochs") == ["q", "p", "s", "r"]
    assert names(database, order_by="+PARAMS.lr") == ["p", "q", "r", "s"]  # 0.01, 0.5, "fast", none
    assert names(database, order_by="param.lr") == ["p", "q", "r", "s"]
    assert names(database, order_by=" -val_acc , name") == ["s", "p", "q", "r"]
    assert names(database, order_by="-Priority") == ["q", "s", "p", "r"]
    assert names(database, order_by="-Xp,name") == ["q", "p", "r", "s"]
    assert names(database, order_by="tags.team,-name") == ["p", "q", "s", "r"]


@pytest.mark.parametrize(
    ("order_by", "points_at", "says"),
    [
        ("val_acc,,name", "val_acc,-->,name", "--order-by: empty name"),
        ("name, -nam", "name, -->-nam", "unknown name 'nam': did you mean name?"),
        ("name,val_acc;x", "name,-->val_acc;x", "is not a name"),
        ("name, priority,,val_acc", "priority,-->,val_acc", "empty name"),
        ("-", "-->-", "is not a name"),
    ],
)
def test_order_by_errors_point_at_the_term(database, order_by, points_at, says):
    with pytest.raises(FilterError) as caught:
        names(database, order_by=order_by)
    assert says in str(caught.value) and points_at in str(caught.value)
    assert str(caught.value).startswith("--order-by: ")


@pytest.mark.parametrize(
    ("where", "points_at", "says"),
    [
        ("name in ('a', nope)", "'a', -->nope", "expected a value"),
        ("name in ('a' 'b')", "'a' -->'b'", "expected ',' or ')'"),
        ("name in ()", "in (-->)", "expected a value"),
        ("nam in ('a')", "-->nam", "unknown name 'nam': did you mean name?"),
        ("nam like 'a%'", "-->nam", "unknown name 'nam'"),
        ("nam is null", "-->nam", "unknown name 'nam'"),
        ("nope like 'a%'", "-->nope", "nope is not text"),  # an unrecorded metric, a number
        ("priority like 'a%'", "-->priority", "is not text"),
        ("name like 3", "like -->3", "quoted pattern"),
        ("name not = 'a'", "not -->=", "expected in or like after not"),
        ("name is 'a'", "is -->'a'", "expected null after is"),
        ("", " -->", "the filter is empty"),
        ("   ", "    -->", "the filter is empty"),
        ("(name = 'a'", "'a' -->", "expected ')'"),
        ("= 'a'", "-->=", "expected a name"),
        ("priority in ('high')", "(-->'high'", "compare it with a number"),
        ("name = 3.5", "= -->3.5", "quote the value"),
        ("created = 5", "= -->5", "is a time"),
        ("params.lr = 1e999", "= -->1e999", "out of range"),
        ("priority > -3000000000", "> -->-3000000000", "out of range"),
        ("priority < 2147483648", "< -->2147483648", "out of range"),
        ("name = 'it''s' and nme = 1", "and -->nme", "unknown name 'nme'"),
        ("params.aug < true", "aug -->< true", "compare only with = or !="),
        ('name = "a', '= -->"a', "never closed"),
        ("name = 'a' @", "'a' -->@", "unexpected '@'"),
        ("priority >", "> -->", "expected a value after '>' (a number, 'text', true, false), found the end"),
        ("priority > >", "> -->>", "found '>'"),
        ("priority 5", "priority -->5", "expected a comparison (=, !=, <, <=, >, >=, in, like, is null), found '5'"),
        ("name like", "like -->", "expected a 'pattern' after like, found the end"),
        ("name = 'a' not", "'a' -->not", "expected and, or or the end, found 'not'"),
        ("name = 'a' and or", "and -->or", "expected a name"),
        (") name = 'p'", "-->)", "expected a name"),
        ("priority in ('high')", "(-->'high'", "priority is a number; compare it with a number, not 'high'"),
        ("priority = true", "= -->true", "compare it with a number, not true"),
        ("name = 3.5", "= -->3.5", "name is text; quote the value, as in name = '3.5'"),
        ("tag is null", "-->tag", "unknown name 'tag': did you mean tags.NAME?"),
        ("foo.bar is null", "-->foo.bar", "dotted names start with params., tags. or metrics."),
    ],
)
def test_malformed_filters_point_at_the_problem(database, where, points_at, says):
    with pytest.raises(FilterError) as caught:
        if where.strip():
            names(database, where)
        else:
            compile_where(where, FieldResolver("sqlite", []))
    message = str(caught.value)
    assert message.startswith("--where: ") and says in message and points_at in message, message
    assert "\n" not in message


def test_in_range_numbers_at_the_edges_are_accepted(database):
    assert names(database, "priority > -2147483648 and priority < 2147483647") != []


def test_a_metric_none_recorded_matches_nothing_and_a_likely_typo_is_refused(database):
    """A name that is no field and no recorded metric is a metric no job has recorded yet: it matches no job
    (and every job is null on it), on a fresh database too; a name close to a known one is taken for a typo."""
    assert names(database, "top5_acc > 0.5") == [] and names(database, "metrics.top5_acc > 0.5") == []
    assert set(names(database, "top5_acc is null")) == set(JOBS)
    assert names(database, order_by="-top5_acc,name") == ["p", "q", "r", "s"]
    assert compile_where("val_acc > 1", FieldResolver("sqlite", [])) is not None  # a fresh database
    # MLflow's spelling is the same metric
    assert set(names(database, "metrics.val_acc >= 0.6")) == set(names(database, "val_acc >= 0.6")) == {"p", "q", "s"}
    for where, says in [
        ("val_ac > 0.5", "did you mean val_acc? (for a metric no job has recorded yet, write metrics.val_ac)"),
        ("xp > 0", "did you mean Xp?"),
        ("backbon = 'x'", "did you mean backbone? at column 1"),
        ("epoch > 1", "did you mean epochs?"),
        ("param = 1", "did you mean params.NAME?"),
    ]:
        with pytest.raises(FilterError) as caught:
            names(database, where)
        message = str(caught.value)
        assert message.startswith(f"--where: unknown name '{where.split()[0]}': ") and says in message
    assert names(database, "metrics.val_ac > 0.5") == []  # metrics.NAME is never taken for a typo
    with pytest.raises(FilterError, match=r"dotted names start with params\., tags\. or metrics\."):
        names(database, "metric_s.x = 1")
    assert {"seconds", "epochs", "created", "status", "backbone"} <= set(field_names())
    with pytest.raises(FilterError, match=r"unknown name 'val_ac': did you mean val_acc\?"):
        compile_where("val_ac > 1", FieldResolver("sqlite", ["val_acc"]))
    # a recorded name no filter can spell is never offered: x_ is not taken for a typo of x%_ or x_/
    assert compile_where("x_ > 1", FieldResolver("sqlite", ["x%_", "x_/", "x'_"])) is not None


def test_the_metrics_a_filter_or_order_uses_are_reported_once_each(database):
    with database.session() as session:
        _, used = results.search_jobs(session, "val_acc > 0.1 or val_acc < 0.05", "-val_acc")
    assert used == ["val_acc"]


def test_long_filters_are_cut_around_the_spot():
    where = "name = 'a' and " * 10 + "name = @" + " and name = 'b'" * 10
    with pytest.raises(FilterError) as caught:
        compile_where(where, FieldResolver("sqlite", []))
    message = str(caught.value)
    spot = where.index("@")
    assert f"...{where[spot - 40 : spot]}-->{where[spot : spot + 40]}..." in message
    assert f"at column {spot + 1}:" in message


def test_tokens_keep_their_values_and_positions():
    tokens = tokenize("a.b >= -1.5e3 and c = 'it''s' or d = \"x\"\"y\" or e = 7 or f = TRUE")
    values = [(t.kind, t.value, t.pos) for t in tokens if t.kind in ("value", "op", "name")]
    assert values[:3] == [("name", "a.b", 0), ("op", ">=", 4), ("value", -1500.0, 7)]
    assert ("value", "it's", 22) in values and ("value", 'x"y', 37) in values
    assert ("value", 7, 51) in values and isinstance(next(v for k, v, p in values if p == 51), int)
    assert values[-1] == ("value", True, 60)
    assert tokens[-1].kind == "end" and tokens[-1].pos == 64


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("not " * 51 + "priority = 0", "more than 50 levels of not and parentheses"),
        ("(" * 51 + "priority = 0" + ")" * 51, "more than 50 levels of not and parentheses"),
        (" or ".join(["priority = 0"] * 201), "more than 200 conditions"),
        ("name in (" + ",".join(["'x'"] * 1001) + ")", "more than 1000 values"),
    ],
)
def test_filters_past_a_limit_are_refused_at_it(where, says):
    with pytest.raises(FilterError, match=says) as caught:
        compile_where(where, FieldResolver("sqlite", []))
    assert "(the limit)" in str(caught.value)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("not " * 50 + "name = 'p'", {"p"}),  # an even number of nots
        ("(" * 50 + "name = 'p'" + ")" * 50, {"p"}),
        ("not (" * 25 + "name = 'p'" + ")" * 25, {"q", "r", "s"}),
        (" or ".join(["name = 'q'"] * 199 + ["name = 's'"]), {"q", "s"}),
        ("name in (" + ",".join(["'p'"] * 999 + ["'r'"]) + ")", {"p", "r"}),
    ],
)
def test_filters_at_a_limit_still_run(database, where, expected):
    assert set(names(database, where)) == expected


def test_tags_with_any_key_select_their_jobs(database):
    assert names(database, tags={"team": "x"}) == ["p"]
    assert names(database, tags={"home town": "Oslo"}) == ["p"]  # a key a JSON path must quote
    assert names(database, tags={'odd "key"': "o"}) == ["s"]  # keys SQLite's JSON paths cannot spell
    assert names(database, tags={"back\\slash": "b"}) == ["s"]
    assert names(database, tags={'odd "key"': "other"}) == []
    assert names(database, "name = 's'", tags={"team": "x"}) == []


@pytest.mark.parametrize(
    ("where", "message_end"),
    [
        ("a" * 40 + "@", ": " + "a" * 40 + "-->@"),  # 40 characters before the spot: shown whole
        ("a" * 41 + "@", ": ..." + "a" * 40 + "-->@"),
        ("@" + "b" * 39, ": -->@" + "b" * 39),  # 40 from the spot to the end: shown whole
        ("a" * 10 + "@" + "b" * 29, ": " + "a" * 10 + "-->@" + "b" * 29),
        ("@" + "b" * 40, ": -->@" + "b" * 39 + "..."),
    ],
)
def test_an_error_shows_up_to_40_characters_either_side_of_the_spot(where, message_end):
    with pytest.raises(FilterError) as caught:
        compile_where(where, FieldResolver("sqlite", []))
    assert str(caught.value).endswith(message_end)


def test_a_filter_error_from_the_tokenizer_names_the_option():
    with pytest.raises(FilterError, match="^--where: unexpected '@' at column 3"):
        tokenize("a @")


def test_times_without_a_zone_are_utc_whatever_the_machines_zone(database, monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30
    time.tzset()
    try:
        assert set(names(database, "created >= '2026-11-23'")) == {"r", "s"}
        assert set(names(database, "created > '2026-11-22T12:00'")) == {"r", "s"}
        assert set(names(database, "created >= '2026-11-22T12:00'")) == {"q", "r", "s"}
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_depth_is_counted_per_nest_not_per_filter(database):
    nest = "(" * 50 + "name = 'p'" + ")" * 50
    assert set(names(database, f"{nest} and {nest}")) == {"p"}  # two nests of 50: each within the limit
    assert set(names(database, " and ".join(["(priority >= -1)"] * 60))) == {"p", "q", "r", "s"}
    with pytest.raises(FilterError, match="more than 50 levels"):
        compile_where(f"{nest} and " + "(" * 51 + "name = 'p'" + ")" * 51, FieldResolver("sqlite", []))
