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
