"""SegmentTable: counts, first places, links and rows of distinct segments, and its saved
columns read back into the same table."""
import pytest

from larimar_ext.longcontext.segments_table import NOWHERE, Place, SegmentTable


def stream(table, texts, overlaps=None):
    news = []
    for i, t in enumerate(texts):
        news.append(table.see(t, i, (overlaps or {}).get(t, 0), t.startswith("+")))
    return news


def test_counts_places_and_links_follow_first_occurrences():
    table = SegmentTable()
    news = stream(table, ["a", "+b", "a", "c", "+b", "d"], overlaps={"+b": 2})
    assert news == [True, True, False, True, False, True]
    assert len(table) == 4 and table.texts() == ["a", "+b", "c", "d"]
    assert table.texts(2) == ["c", "d"]
    assert table.count("a") == 2 and table.count("+b") == 2 and table.count("zz") == 0
    assert table.place("+b") == Place(1, "a", 2, True)
    assert table.place("c") == Place(3, "a", 0, False)     # after the second "a"
    assert table.place("zz") is NOWHERE and table.place(None) is NOWHERE
    # the first distinct segment after each one's first occurrence
    assert [table.next_of(t) for t in ("a", "+b", "c", "d")] == ["+b", "a", "+b", None]
    assert table.row_of("a") is None                       # seen, not stored yet


def test_rows_hold_one_segment_or_several():
    table = SegmentTable()
    stream(table, ["x", "y", "z"])
    for row, text in ((0, "y"), (1, "x"), (0, "z")):       # paper mode: z shares y's key
        table.store(row, text)
    assert table.rows == 2 and table.rows_shared() == 1
    assert table.row_texts(0) == ["y", "z"] and table.row_texts(1) == ["x"]
    assert list(table.stored()) == ["y", "z", "x"]
    assert [table.row_of(t) for t in "xyz"] == [1, 0, 0]
    with pytest.raises(ValueError, match="row"):
        table.store(5, "x")


def test_saved_columns_read_back_into_the_same_table():
    table = SegmentTable()
    stream(table, ["p", "+q", "r", "p", "s"], overlaps={"+q": 3})
    for row, text in enumerate(["r", "p", "s", "+q"]):     # rows in another order than seen
        table.store(row, text)
    saved = table.saved()
    data = saved["text_bytes"].tobytes()
    offsets = saved["text_offsets"]
    texts = [data[offsets[i]:offsets[i + 1]].decode() for i in range(len(offsets) - 1)]
    assert texts == list(table.stored())
    back = SegmentTable.from_saved(texts, *(saved[k] for k in (
        "text_rows", "text_counts", "text_positions", "text_prev", "text_next", "text_overlap",
        "text_continues")))
    for t in table.texts():
        assert (back.place(t), back.next_of(t), back.row_of(t), back.count(t)) == \
            (table.place(t), table.next_of(t), table.row_of(t), table.count(t))
    assert list(back.stored()) == texts
    with pytest.raises(ValueError, match="row"):
        SegmentTable.from_saved(["a", "b"], [1, 0], [1, 1], [0, 1], [-1, 0], [1, -1], [0, 0],
                                [0, 0])
