from daas import results
from daas.jobs import chunks, display_name
from daas.classifier import Prediction


def test_display_names_drop_directories_and_control_characters():
    assert display_name("../../x.png") == "x.png"
    assert display_name("C:\\Users\\me\\cat.jpg") == "cat.jpg"
    assert display_name("a\x00b\nc.png") == "abc.png"
    assert display_name("") == display_name(None) == display_name("../") == "image"
    assert len(display_name("x" * 1000)) == 200


def test_result_documents():
    prediction = Prediction("espresso", 0.95, [("espresso", 0.95), ("cup", 0.01)])
    done = results.done("j", "i", "cup.png", prediction, "efficientnet_lite0", "host", {"forward": 12.345})
    assert done["status"] == "done" and done["label"] == "espresso" and done["error"] is None
    assert done["top5"] == [["espresso", 0.95], ["cup", 0.01]] and done["timings_ms"] == {"forward": 12.35}
    error = results.error("j", "i", "x.png", "the file is empty")
    assert error["status"] == "error" and error["label"] is None and error["error"] == "the file is empty"


def test_a_request_is_split_into_as_few_near_equal_chunks_as_the_limit_allows():
    sizes = {n: [len(chunk) for chunk in chunks(list(range(n)), 4)] for n in (1, 4, 5, 9, 10)}
    assert sizes == {1: [1], 4: [4], 5: [3, 2], 9: [3, 3, 3], 10: [4, 3, 3]}
    assert [x for chunk in chunks(list(range(10)), 4) for x in chunk] == list(range(10))
    assert chunks([], 4) == [] and chunks(["a", "b"], 1) == [["a"], ["b"]]


def test_uploads_joined_read_as_one_file_with_seeks_and_none_copied_whole(tmp_path):
    """The body of a pack's PUT: parts in memory and in files, read in pieces, sought back and
    read again as botocore does (checksum, then send)."""
    import io
    import tempfile

    from daas.storage import Joined, size_of

    spooled = tempfile.SpooledTemporaryFile(max_size=4)  # rolled over to disk: a large upload
    spooled.write(b"0123456789")
    parts = [b"abc", spooled, io.BytesIO(b"XYZW"), b"!"]
    sizes = [size_of(part) for part in parts]
    assert sizes == [3, 10, 4, 1]
    joined = Joined(parts, sizes)
    assert joined.read() == b"abc0123456789XYZW!" and joined.read() == b""
    assert joined.seek(0, io.SEEK_END) == 18 and joined.tell() == 18
    joined.seek(2)
    assert [joined.read(4), joined.read(100)] == [b"c012", b"3456789XYZW!"]
    joined.seek(-3, io.SEEK_END)
    assert joined.read(2) == b"ZW" and joined.read() == b"!"


def test_an_upload_that_shrank_after_it_was_measured_fails_its_pack():
    import io

    import pytest

    from daas.storage import Joined

    with pytest.raises(OSError, match="changed while being stored"):
        Joined([io.BytesIO(b"abc")], [5]).read()
