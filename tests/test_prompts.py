"""The one parser of prompts given as text (the app's API, the command line): values of the documented shape or
one PromptError sentence, whatever the text, including the extremes a hostile client sends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canon import geometry
from canon.prompts import (MAX_COORDINATE, MAX_POINTS, MAX_PROMPT_CHARS, PromptError, Prompts, parse_box,
                           parse_point, parse_prompts)


def test_the_documented_forms_parse():
    prompts = parse_prompts("[[10, 20.5, 1], [30, 40, 0], [5, 6]]", "[1, 2, 30, 40]")
    assert prompts.points.tolist() == [[10, 20.5], [30, 40], [5, 6]] and prompts.labels.tolist() == [1, 0, 1]
    assert prompts.box.tolist() == [1, 2, 30, 40]
    assert parse_prompts("", " 1, 2 ,30,40 ").box.tolist() == [1, 2, 30, 40]
    assert parse_prompts(None, None).empty and parse_prompts("  ", "").empty and parse_prompts("[]", "").empty
    assert parse_point("3,4") == (3.0, 4.0, 1) and parse_point("3, 4, 0") == (3.0, 4.0, 0)
    assert parse_box("[0, 0, 1.5, 2]") == (0.0, 0.0, 1.5, 2.0)


@pytest.mark.parametrize("points, box, message", [
    ("[[1, 2, Infinity]]", "", "finite numbers, not Infinity"),
    ("[[NaN, 2]]", "", "finite numbers, not NaN"),
    ("[[-Infinity, 2]]", "", "finite numbers"),
    ("[[1e400, 2]]", "", "finite numbers"),
    ("[[1e30, 2]]", "", "beyond any photo"),
    ("[[1, 2, 1e30]]", "", "labels must be 1"),
    ("[[1, 2, 2]]", "", "labels must be 1"),
    ("[[1, 2, true]]", "", "labels must be 1"),
    ("[[1, %s]]" % ("9" * 400), "", "more than 32 characters"),
    ("[[1, -%s]]" % ("9" * 9000), "", "longer than"),
    ("[" * 100_000 + "]" * 100_000, "", "longer than"),
    ("[" * 1000, "", "give points"),
    ("[[[1, 2]]]", "", "give points"),
    ('{"x": 1}', "", "give points"),
    ('[["1", 2]]', "", "give points"),
    ("[[1]]", "", "give points"),
    ("[[1, 2, 1, 4]]", "", "give points"),
    ("[1, 2]", "", "give points"),
    ("[[1, 2]" + ", [1, 2]" * MAX_POINTS + "]", "", f"at most {MAX_POINTS}"),
    ("not json", "", "give points"),
    ("", "1,2,3", "give a box"),
    ("", "[1, 2, 3, 4, 5]", "give a box"),
    ("", "[[1, 2, 3, 4]]", "give a box"),
    ("", "1,2,3,inf", "finite numbers"),
    ("", "1,2,3,1e9", "beyond any photo"),
])
def test_hostile_prompt_text_gets_one_sentence(points, box, message):
    with pytest.raises(PromptError, match=message) as info:
        parse_prompts(points, box)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


@pytest.mark.parametrize("value", [5, 1.5, ["[[1, 2]]"], {"points": []}, True])
def test_prompts_that_are_not_text_are_refused(value):
    with pytest.raises(PromptError, match="as text"):
        parse_prompts(value, "")


def test_deep_json_costs_nothing_and_raises_no_recursion_error():
    deep = "[" * (MAX_PROMPT_CHARS // 2) + "]" * (MAX_PROMPT_CHARS // 2)
    with pytest.raises(PromptError, match="give points"):
        parse_prompts(deep, "")


def test_scaled_prompts_keep_their_place_on_a_resized_image():
    prompts = Prompts.make([[100, 50]], [1], [10, 20, 110, 220]).scaled(0.5, 0.25)
    assert prompts.points.tolist() == [[50, 12.5]] and prompts.box.tolist() == [5, 5, 55, 55]
    prompts.validate((60, 60))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60), st.text(max_size=40))
def test_fuzz_parsing_gives_values_or_one_sentence(points, box):
    for parse, args in ((parse_prompts, (points, box)), (parse_point, (box,)), (parse_box, (box,))):
        try:
            values = parse(*args)
        except PromptError as error:
            assert "\n" not in str(error)
        else:
            numbers = np.concatenate([values.points.ravel(), [] if values.box is None else values.box]) \
                if isinstance(values, Prompts) else np.asarray(values, dtype=float)
            assert np.all(np.isfinite(numbers)) and np.all(np.abs(numbers) <= MAX_COORDINATE)


@pytest.mark.parametrize("k", range(4))
def test_prompts_turned_by_quarter_turns_are_the_rotated_ones(k):
    prompts = Prompts.make([[10.5, 20.0], [3.0, 7.25]], [1, 0], [2.0, 4.0, 30.0, 25.5])
    turned, rotated = prompts.turned(90 * k, (40, 60)), prompts.rotated(k, (40, 60))
    assert np.array_equal(turned.points, rotated.points) and np.array_equal(turned.box, rotated.box)
    assert np.array_equal(turned.labels, prompts.labels)


def test_prompts_turned_by_a_tilt_keep_their_points_on_the_photo():
    """A point goes where the photo's pixel goes; the box grows to hold its tilted corners."""
    prompts = Prompts.make([[30.0, 20.0]], [1], [10.0, 10.0, 50.0, 30.0])
    turned = prompts.turned(20, (40, 60))
    np.testing.assert_allclose(geometry.unrotate_points_free(turned.points, 20, (40, 60)), prompts.points)
    x0, y0, x1, y1 = turned.box
    assert x1 - x0 > 40 and y1 - y0 > 20
    assert x0 <= turned.points[0, 0] <= x1 and y0 <= turned.points[0, 1] <= y1
