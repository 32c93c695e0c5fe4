"""A source-line range name is read back whatever it holds (found by mypy: the match was used unchecked)."""
from attnprof.trace.runinfo import SOURCE_PREFIX, SourceRange, parse_source_range


def test_a_source_range_whose_site_holds_a_newline_is_read_back():
    # a file name may hold a newline; `.` without DOTALL stops there and the name did not match at all
    name = SOURCE_PREFIX + "odd\nname.py:12 in=7f00 #3"
    assert parse_source_range(name) == SourceRange("odd\nname.py:12", 0x7F00, 3)


def test_a_source_range_of_an_older_run_has_neither_read_nor_number():
    assert parse_source_range(SOURCE_PREFIX + "model.py:44") == SourceRange("model.py:44", None, None)
