"""Segment colours: organ colours by name (a pair's sides told apart), else the palette."""

from sam2refine.io.colors import default_color


def test_the_palette_has_twenty_distinct_colours_in_range():
    palette = [default_color(i) for i in range(20)]
    assert len(set(palette)) == 20
    assert default_color(20) == default_color(0)
    assert all(0.0 <= c <= 1.0 for color in palette for c in color)


def test_organs_get_their_colour_whatever_the_spelling():
    assert default_color(3, "LIVER") == default_color(7, "liver") != default_color(3)
    assert default_color(5, "Kidney_right") == default_color(0, "kidney")
    assert default_color(5, "Kidney_left") == default_color(1, "left kidney")
    assert default_color(4, "unknown thing") == default_color(4)


def test_left_and_right_organs_are_told_apart():
    left, right = default_color(0, "kidney_left"), default_color(0, "kidney_right")
    assert left != right
    assert all(lc >= rc for lc, rc in zip(left, right))  # the left one is the lighter shade
