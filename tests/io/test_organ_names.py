"""One organ-name key for terminology, colours and prompt-source matching."""

import pytest

from sam2refine.auto.sources import match_organs
from sam2refine.io.colors import default_color
from sam2refine.io.organ_names import organ_key
from sam2refine.io.terminology import lookup

LEFT_KIDNEY = ["Kidney_left", "kidney left", "left kidney", "KIDNEY-L", "Lt. Kidney",
               "kidney_L", "left_kidney", "Kidney Left", "kidney.left", "L kidney"]


@pytest.mark.parametrize("spelling", LEFT_KIDNEY)
def test_every_spelling_of_the_left_kidney_has_one_key(spelling):
    assert organ_key(spelling) == "kidney left"


@pytest.mark.parametrize("spelling", LEFT_KIDNEY)
def test_terminology_colour_and_matching_agree_on_every_spelling(spelling):
    codes = lookup(spelling)
    assert (codes.type.meaning, codes.type_modifier.meaning) == ("Kidney", "Left")
    assert default_color(0, spelling) == default_color(9, "kidney_left")
    assert match_organs(["kidney_right", "kidney_left"], [spelling], "the source") == [
        "kidney_left"]


@pytest.mark.parametrize(("a", "b"), [("gall bladder", "Gallbladder"),
                                      ("Inferior_Vena_Cava", "inferior vena cava"),
                                      ("rib_left_7", "left rib 7")])
def test_separators_and_word_order_do_not_matter(a, b):
    assert organ_key(a) == organ_key(b)


@pytest.mark.parametrize(("a", "b"), [("kidney_left", "kidney_right"), ("liver", "lung"),
                                      ("rib_left_7", "rib_left_8"), ("vertebrae_L1", "vertebrae")])
def test_different_organs_keep_different_keys(a, b):
    assert organ_key(a) != organ_key(b)
