"""DRF's JSON parser, with a body nested too deep for Python's json module answered as 400;
and one that keeps numbers with a fraction or an exponent as they were written."""
import codecs
from collections.abc import Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils import json


class BoundedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


class JSONNumberText(str):
    """A JSON number with a fraction or an exponent, as written: `1e1` stays "1e1"."""


class ExactNumbersJSONParser(BoundedJSONParser):
    """JSON whose numbers with a fraction or an exponent arrive as `JSONNumberText`.

    For fields that must read a number exactly as sent (an amount of money): as floats,
    `1e1`, `10.0` and `10.000` are one value, and `0.1` is not one tenth. Integers stay int.
    """

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        # DRF's JSONParser.parse, with parse_float (which it does not let a subclass set);
        # its charset check (no bytes-to-bytes codecs) is not in its type stubs.
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        try:
            text = codecs.getreader(encoding)(stream).read()
            return json.loads(text, parse_float=JSONNumberText,
                              parse_constant=json.strict_constant if self.strict else None)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
