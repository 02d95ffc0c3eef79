"""Result queries on SQLite and PostgreSQL: the --where language, leaderboards, and the SQL views."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support import RESULT_RUNS as RUNS
from tests.support import populate_results
from tlq.db import Database, queries, results
from tlq.db.filters import FilterError
from tlq.db.models import Job


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = Database(url)
    ids = populate_results(database)
    yield database, ids
    database.dispose()


def names(db, where=None, order_by=None, tags=None) -> list[str]:
    database, _ = db
    with database.session() as session:
        jobs, _ = results.search_jobs(session, where, order_by, tags)
        return [job.name for job in jobs]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        # final values: a ends at 0.88 (its best was 0.91), b at 0.86, c at 0.95; d has none
        ("val_acc > 0.87", {"a", "c"}),
        ("val_acc > 0.9 and backbone = 'vgg16'", set()),
        ("val_acc >= 0.86 and backbone = 'vgg16'", {"a", "b"}),
        ("params.lr <= 1e-3 and params.lr > 5e-4", {"a", "c"}),
        ("params.lr = 0.0001", {"b", "d"}),
        ("params.strategy = 'freeze'", {"c", "d"}),
        ("tags.dataset = 'pets'", {"a", "b"}),
        ("tags.dataset in ('digits', 'other')", {"c"}),
        ("backbone not in ('vgg16')", {"c", "d"}),
        ("backbone like 'res%'", {"c", "d"}),
        ("val_acc is null", {"d"}),
        ("not val_acc is null and not (backbone = 'vgg16' or val_loss < 0.1)", {"c"}),
        ("status = 'succeeded' or status = 'queued' and backbone = 'resnet50'", {"a", "b", "c", "d"}),
        ("(status = 'succeeded' or status = 'queued') and backbone = 'resnet50'", {"c", "d"}),
        ("created >= '2026-11-22'", {"c", "d"}),
        ("created < '2026-11-21T06:00'", {"a"}),
        ("seconds > 50 and seconds < 70", {"b"}),
        ("epochs = 2", {"c"}),
        ('name = "a" OR NAME = "b"', {"a", "b"}),
        ("backbone = 'it''s'", set()),
        # a number compared with a text parameter, and text with a number: no match, and no cast error on PG
        ("params.data > 3", set()),
        ("params.lr = 'fast'", set()),
        # is null sees text and numbers alike, and a key no job has
        ("params.data is not null", {"a", "b", "c", "d"}),
        ("params.strategy is null or params.nope is not null", set()),
        ("params.nope is null and tags.dataset is null", {"d"}),
        # like ignores case on both databases
        ("backbone like 'RES%'", {"c", "d"}),
    ],
)
def test_where_selects_the_right_jobs(db, where, expected):
    assert set(names(db, where)) == expected


def test_order_by_sorts_and_puts_missing_values_last(db):
    assert names(db, order_by="-val_acc") == ["c", "a", "b", "d"]
    assert names(db, order_by="val_loss") == ["c", "a", "b", "d"]
    assert names(db, order_by="params.lr,-val_acc") == ["b", "d", "c", "a"]
    assert names(db, where="backbone = 'vgg16'", order_by="created") == ["a", "b"]


def test_tag_filter(db):
    assert set(names(db, tags={"dataset": "pets"})) == {"a", "b"}
    assert names(db, tags={'odd "key"': "x"}) == ["d"]  # a key SQLite's JSON paths cannot spell
    database, _ = db
    with database.session() as session:
        assert [j.name for j in queries.list_jobs(session, tags={"dataset": "digits"})] == ["c"]


@pytest.mark.parametrize(
    ("where", "points_at", "says"),
    [
        ("val_acc >", "val_acc > -->", "expected a value"),
        ("val_acc > 0.9 and", "and -->", "expected a name"),
        ("val_acc >> 0.9", ">-->> 0.9", "expected a value"),
        ("val_acc > 0.9 backbone = 'x'", "0.9 -->backbone", "expected and, or or the end"),
        ("(val_acc > 0.9", "0.9 -->", "expected ')'"),
        ("backbone = 'vgg16", "= -->'vgg16", "never closed"),
        ("backbone = vgg16", "= -->vgg16", "expected a value"),
        ("backbon = 'vgg16'", "-->backbon", "unknown name 'backbon'"),
        ("val_ac > 0.9", "-->val_ac", "val_acc"),
        ("backbone > 3", "> -->3", "quote the value"),
        ("val_acc = 'high'", "= -->'high'", "compare it with a number"),
        ("created > 'yesterday'", "> -->'yesterday'", "not a date"),
        ("val_acc > 0.9; drop table jobs", "0.9-->;", "unexpected ';'"),
        ("foo.bar = 1", "-->foo.bar", "params., tags. or metrics."),
        ("backbone in 'vgg16'", "in -->'vgg16'", "expected '('"),
        ("id = 99999999999999999999", "= -->9999", "out of range"),
        ("val_acc > 1e999", "> -->1e999", "out of range"),
        ("created > '0001-01-01T00:00+05:00'", "> -->'0001", "not a date"),
    ],
)
def test_malformed_filters_point_at_the_error(db, where, points_at, says):
    with pytest.raises(FilterError) as caught:
        names(db, where)
    message = str(caught.value)
    assert "\n" not in message
    assert says in message
    assert points_at in message


DEEP = 1200  # deeper than Python's recursion limit


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("not " * DEEP + "val_acc > 0.5", "more than 50 levels of not and parentheses"),
        ("(" * 2000 + "val_acc > 0.5" + ")" * 2000, "more than 50 levels of not and parentheses"),
        ("not (" * 26 + "val_acc > 0.5" + ")" * 26, "more than 50 levels of not and parentheses"),
        (" or ".join(["val_acc is null"] * 3000), "more than 200 conditions"),  # SQLite: expression too deep
        ("backbone in (" + ",".join(["'x'"] * 70000) + ")", "more than 1000 values"),  # PostgreSQL: 65535 binds
    ],
)
def test_oversized_filters_are_refused_at_a_named_limit(db, where, says):
    with pytest.raises(FilterError) as caught:
        names(db, where)
    message = str(caught.value)
    assert "\n" not in message and says in message and "(the limit)" in message
    assert "-->" in message and len(message) < 300  # a long filter is cut around the spot, not echoed whole


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("not " * 50 + "val_acc is null", {"d"}),
        ("(" * 50 + "val_acc is null" + ")" * 50, {"d"}),
        ("not (" * 25 + "val_acc is null" + ")" * 25, {"a", "b", "c"}),
        (" or ".join(["name = 'b'"] * 199 + ["name = 'c'"]), {"b", "c"}),
        ("name in (" + ",".join(["'a'"] * 999 + ["'c'"]) + ")", {"a", "c"}),
    ],
)
def test_filters_at_the_limits_still_run(db, where, expected):
    assert set(names(db, where)) == expected


EVIL = "x'; DROP TABLE jobs; --"  # a backbone name that is also SQL


@pytest.mark.parametrize(
    ("where", "outcome"),
    [
        # SQL inside a quoted value is a value: it matches the job with that name, and only it
        ("backbone = 'x''; DROP TABLE jobs; --'", {"evil"}),
        ("backbone like '%DROP TABLE%'", {"evil"}),
        # SQL outside quotes is refused, with the one-line error that points at it
        ("backbone = 'x' or 1=1", "expected a name"),
        ("name = '' or ''=''", "expected a name"),
        ('backbone = "vgg16\\" or 1=1 --"', "unexpected '-'"),
        ("params.lr) or (1=1 > 0", "expected a comparison"),
        ("tags.x'); drop table jobs; -- = 'a'", "never closed"),
        ("val_acc > 0 union select * from jobs", "unexpected '*'"),
        ("metrics.value > 0", set()),  # a metric no job recorded: nothing matches
    ],
)
def test_filters_cannot_inject_sql(db, where, outcome):
    database, ids = db
    with database.session() as session:
        queries.create_job(session, task="finetune", backbone=EVIL, params={}, tags={}, queue="cpu", name="evil")
        metric_rows = session.scalar(sa.text("SELECT COUNT(*) FROM metrics"))
    if isinstance(outcome, set):
        assert set(names(db, where)) == outcome
    else:
        with pytest.raises(FilterError) as caught:
            names(db, where)
        assert outcome in str(caught.value) and "\n" not in str(caught.value)
    with database.session() as session:  # nothing ran but the one SELECT: both tables are whole
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == len(RUNS) + 1
        assert session.scalar(sa.text("SELECT COUNT(*) FROM metrics")) == metric_rows > 0


def test_order_by_errors(db):
    with pytest.raises(FilterError, match="unknown name 'backbon': did you mean backbone"):
        names(db, order_by="-backbon")
    with pytest.raises(FilterError, match="is not a name"):
        names(db, order_by="val_acc; drop table jobs")
    with pytest.raises(FilterError, match="empty name"):
        names(db, order_by="val_acc,,created")


def test_leaderboard_ranks_best_first_and_marks_the_best(db):
    database, ids = db
    with database.session() as session:
        jobs = [queries.get_job(session, ids[n]) for n in "abcd"]
        rows = results.leaderboard(session, jobs, "val_acc")
        assert [r.job for r in rows] == [ids["c"], ids["a"], ids["b"], ids["d"]]
        assert [r.best for r in rows] == [0.95, 0.91, 0.86, None]
        assert [r.final for r in rows] == [0.95, 0.88, 0.86, None]
        assert [r.best_run for r in rows] == [True, False, False, False]
        assert rows[0].epochs == 2 and rows[1].epochs == 3
        assert rows[1].params == {"lr": 1e-3, "strategy": "full"}  # what differs between the jobs, not data
        assert rows[0].seconds == pytest.approx(90.0)
        losses = results.leaderboard(session, jobs, "val_loss")
        assert [r.best for r in losses][:3] == [0.15, 0.3, 0.4]  # a loss ranks lowest first


def test_views_give_the_same_numbers_as_the_leaderboard(db):
    database, ids = db
    with database.session() as session:
        rows = session.execute(
            sa.text("SELECT job_id, val_acc, epochs, seconds, status FROM job_results ORDER BY job_id")
        ).all()
        summary = session.execute(
            sa.text(
                "SELECT final_value, max_value, min_value, points FROM metric_summary"
                " WHERE job_id = :id AND name = 'val_acc'"
            ),
            {"id": ids["a"]},
        ).one()
    by_id = {row.job_id: row for row in rows}
    assert by_id[ids["a"]].val_acc == pytest.approx(0.88)
    assert by_id[ids["c"]].val_acc == pytest.approx(0.95)
    assert by_id[ids["d"]].val_acc is None
    assert by_id[ids["a"]].epochs == 3
    assert float(by_id[ids["b"]].seconds) == pytest.approx(60.0, abs=0.01)
    assert tuple(summary) == pytest.approx((0.88, 0.91, 0.70, 3))
