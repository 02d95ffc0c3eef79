"""The tokenizer and parser of the `--where` language of `tlq results` (the language is described in
tlq/db/filters.py, which compiles names to columns and holds the `--order-by` compiler).

A filter is bounded in size: at most ``MAX_DEPTH`` levels of ``not`` and parentheses (the parser recurses once
per level, and Python's stack ends near 1000), at most ``MAX_CONDITIONS`` comparisons (SQLite refuses an
expression tree deeper than 1000, and it nests a chain of ``or`` one level per term) and at most ``MAX_VALUES``
values (each is a bound parameter, and PostgreSQL takes at most 65535 in one query).
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, not_, or_
from sqlalchemy.sql.elements import ColumnElement

if TYPE_CHECKING:
    from tlq.db.filters import FieldResolver

MAX_DEPTH = 50
MAX_CONDITIONS = 200
MAX_VALUES = 1000
KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false", "like"}
TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<paren>[(),])
  | (?P<name>[A-Za-z_][\w-]*(?:\.[\w-]+)?)
    """,
    re.VERBOSE,
)


class FilterError(ValueError):
    """A filter that cannot be parsed or does not fit the data; the message points at the spot.

    The CLI prints it as one line and exits 2, as it does for every bad input.
    """


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    value: Any
    pos: int


def _point(source: str, pos: int, context: int = 40) -> str:
    """The filter with ``-->`` at ``pos``; a long filter is cut to ``context`` characters either side."""
    before = source[:pos] if pos <= context else "..." + source[pos - context : pos]
    after = source[pos:] if len(source) - pos <= context else source[pos : pos + context] + "..."
    return f"{before}-->{after}" if pos < len(source) else f"{before} -->"


def filter_error(option: str, source: str, pos: int, message: str) -> FilterError:
    return FilterError(f"{option}: {message} at column {pos + 1}: {_point(source, pos)}")


def tokenize(source: str, option: str = "--where") -> list[Token]:
    """The tokens of a filter; raises FilterError at the first character that starts none."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        match = TOKEN.match(source, pos)
        if match is None:
            if source[pos] in "'\"":
                raise filter_error(option, source, pos, "this quote is never closed")
            raise filter_error(option, source, pos, f"unexpected {source[pos]!r}")
        kind = match.lastgroup
        text = match.group()
        if kind == "number":
            tokens.append(Token("value", text, float(text) if re.search(r"[.eE]", text) else int(text), pos))
        elif kind == "string":
            quote = text[0]
            tokens.append(Token("value", text, text[1:-1].replace(quote * 2, quote), pos))
        elif kind == "name" and text.lower() in KEYWORDS:
            word = text.lower()
            if word in ("true", "false"):
                tokens.append(Token("value", text, word == "true", pos))
            else:
                tokens.append(Token(word, text, None, pos))
        elif kind != "space":
            tokens.append(Token(kind, text, text, pos))
        pos = match.end()
    tokens.append(Token("end", "", None, len(source)))
    return tokens


# --- parser -----------------------------------------------------------------------------------------------------


COMPARISONS: dict[str, Callable[[Any, Any], ColumnElement]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str"


class WhereParser:
    """A recursive-descent parser of the `--where` language that builds the SQL expression as it goes."""

    def __init__(self, source: str, resolver: FieldResolver, option: str = "--where") -> None:
        self.source = source
        self.option = option
        self.resolver = resolver
        self.tokens = tokenize(source, option)
        self.index = 0
        self.depth = 0
        self.conditions = 0
        values = [token for token in self.tokens if token.kind == "value"]
        if len(values) > MAX_VALUES:
            message = f"more than {MAX_VALUES} values (the limit); tag the jobs and filter on the tag"
            raise self.fail(message, values[MAX_VALUES])

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def fail(self, message: str, token: Token | None = None) -> FilterError:
        return filter_error(self.option, self.source, (token or self.token).pos, message)

    def take(self, kind: str) -> Token | None:
        if self.token.kind == kind:
            token = self.token
            self.index += 1
            return token
        return None

    def expect(self, kind: str, what: str) -> Token:
        token = self.take(kind)
        if token is None:
            found = f"{self.token.text!r}" if self.token.kind != "end" else "the end"
            raise self.fail(f"expected {what}, found {found}")
        return token

    def parse(self) -> ColumnElement:
        if self.token.kind == "end":
            raise self.fail("the filter is empty; write a condition such as val_acc > 0.9")
        expression = self.parse_or()
        if self.token.kind != "end":
            raise self.fail(f"expected and, or or the end, found {self.token.text!r}")
        return expression

    def parse_or(self) -> ColumnElement:
        parts = [self.parse_and()]
        while self.take("or"):
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else or_(*parts)

    def parse_and(self) -> ColumnElement:
        parts = [self.parse_not()]
        while self.take("and"):
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else and_(*parts)

    def parse_not(self) -> ColumnElement:
        if self.token.kind == "not" or (self.token.text == "(" and self.token.kind == "paren"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                message = (
                    f"more than {MAX_DEPTH} levels of not and parentheses (the limit); write the filter with fewer"
                )
                raise self.fail(message)
            inner = self._parse_nested()
            self.depth -= 1
            return inner
        return self.parse_comparison()

    def _parse_nested(self) -> ColumnElement:
        if self.take("not"):
            return not_(self.parse_not())
        self.index += 1
        inner = self.parse_or()
        if self.token.text != ")":
            raise self.fail("expected ')' to close the '('")
        self.index += 1
        return inner

    def parse_comparison(self) -> ColumnElement:
        name_token = self.token
        if name_token.kind != "name":
            raise self.fail("expected a name (val_acc, backbone, params.lr, ...)")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise self.fail(f"more than {MAX_CONDITIONS} conditions (the limit); use in (...) or filter on a tag")
        self.index += 1
        if self.take("is"):
            negate = self.take("not") is not None
            self.expect("null", "null after is")
            missing = self.resolver.missing(name_token.text, lambda m: self.fail(m, name_token))
            return not_(missing) if negate else missing
        negate = False
        if self.token.kind == "not":
            self.index += 1
            negate = True
            if self.token.kind not in ("in", "like"):
                raise self.fail("expected in or like after not")
        if self.take("in"):
            return self._membership(name_token, negate)
        if self.take("like"):
            pattern = self.expect("value", "a 'pattern' after like")
            if not isinstance(pattern.value, str):
                raise self.fail("like takes a quoted pattern such as 'resnet%'", pattern)
            column, kind = self.resolver.resolve(name_token.text, "str", lambda m: self.fail(m, name_token))
            if kind != "str":
                raise self.fail(f"{name_token.text} is not text; like works on text fields", name_token)
            condition = column.ilike(pattern.value)  # case-insensitive on SQLite and PostgreSQL alike
            return not_(condition) if negate else condition
        op = self.expect("op", "a comparison (=, !=, <, <=, >, >=, in, like, is null)")
        value_token = self.expect("value", f"a value after {op.text!r} (a number, 'text', true, false)")
        column, kind = self.resolver.resolve(
            name_token.text, _value_kind(value_token.value), lambda m: self.fail(m, name_token)
        )
        value = self._coerce(name_token, kind, value_token)
        if kind == "bool" and op.text not in ("=", "==", "!=", "<>"):
            raise self.fail(f"true and false compare only with = or !=, not {op.text}", op)
        return COMPARISONS[op.text](column, value)  # only the one asked for: SQLAlchemy refuses `< true`

    def _membership(self, name_token: Token, negate: bool) -> ColumnElement:
        if self.token.text != "(":
            raise self.fail("expected '(' after in, as in backbone in ('vgg16', 'resnet50')")
        self.index += 1
        tokens = [self.expect("value", "a value in the list")]
        while self.token.text == ",":
            self.index += 1
            tokens.append(self.expect("value", "a value after ','"))
        if self.token.text != ")":
            raise self.fail("expected ',' or ')' in the list")
        self.index += 1
        column, kind = self.resolver.resolve(
            name_token.text, _value_kind(tokens[0].value), lambda m: self.fail(m, name_token)
        )
        values = [self._coerce(name_token, kind, token) for token in tokens]
        condition = column.in_(values)
        return not_(condition) if negate else condition

    def _coerce(self, name_token: Token, kind: str, token: Token) -> Any:
        """The value as the field's type; a mismatch is an error naming both."""
        value = token.value
        given = _value_kind(value)
        name = name_token.text
        if kind in ("int", "float", "number"):
            if given != "number":
                raise self.fail(f"{name} is a number; compare it with a number, not {token.text}", token)
            if kind == "int":
                if not -(2**31) <= value < 2**31:
                    raise self.fail(f"{token.text} is out of range for {name}", token)
                return value
            number = float(value)
            if number in (float("inf"), float("-inf")):
                raise self.fail(f"{token.text} is out of range; numbers go up to about 1.8e308", token)
            return number
        if kind == "str":
            if given != "str":
                raise self.fail(f"{name} is text; quote the value, as in {name} = '{token.text}'", token)
            return value
        if kind == "bool":
            return value
        if kind == "time":
            if given != "str":
                raise self.fail(f"{name} is a time; write it as '2026-11-28' or '2026-11-28T14:00'", token)
            try:
                moment = dt.datetime.fromisoformat(value)
                moment = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
            except (ValueError, OverflowError):
                message = f"{token.text} is not a date; write it as '2026-11-28' or '2026-11-28T14:00'"
                raise self.fail(message, token) from None
            return moment
        raise self.fail(f"cannot compare {name}", name_token)
