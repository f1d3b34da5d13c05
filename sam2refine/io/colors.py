"""Segment colours: Slicer-like organ colours by name, else a fixed distinguishable palette."""

from __future__ import annotations

from sam2refine.io.organ_names import organ_words, words_key

# A fixed palette of distinguishable, not too saturated colours (RGB 0..255).
# fmt: off
_PALETTE_255: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128), (241, 214, 145), (216, 101, 79), (111, 184, 210), (230, 220, 70),
    (183, 156, 220), (144, 238, 144), (255, 160, 60), (0, 151, 206), (250, 128, 180),
    (150, 100, 60), (60, 180, 170), (200, 200, 235), (180, 40, 120), (120, 120, 230),
    (220, 245, 20), (255, 250, 220), (90, 140, 60), (230, 158, 140), (100, 60, 160),
)
# fmt: on

# Organ colours close to those Slicer's anatomy colour tables use, keyed by normalized name.
_ORGAN_COLORS_255: dict[str, tuple[int, int, int]] = {
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "kidney": (185, 102, 83),
    "aorta": (224, 97, 76),
    "heart": (206, 110, 84),
    "lung": (197, 165, 145),
    "pancreas": (249, 180, 111),
    "stomach": (216, 132, 105),
    "gallbladder": (139, 150, 98),
    "esophagus": (211, 171, 143),
    "duodenum": (255, 253, 229),
    "colon": (204, 168, 143),
    "small intestine": (205, 167, 142),
    "urinary bladder": (222, 154, 132),
    "bladder": (222, 154, 132),
    "adrenal gland": (249, 186, 150),
    "prostate": (230, 158, 140),
    "brain": (250, 250, 225),
    "bone": (241, 214, 145),
    "vertebra": (241, 213, 144),
    "rib": (253, 232, 158),
    "inferior vena cava": (0, 151, 206),
    "portal vein": (0, 151, 206),
    "vein": (0, 151, 206),
    "artery": (216, 101, 79),
    "trachea": (182, 228, 255),
    "thyroid gland": (220, 200, 140),
    "muscle": (192, 104, 88),
    "fat": (230, 220, 70),
    "skin": (177, 122, 101),
    "tumor": (144, 238, 144),
    "lesion": (144, 238, 144),
}
_BY_KEY = {words_key(name.split(), None): rgb for name, rgb in _ORGAN_COLORS_255.items()}
_LEFT_TINT = 0.3  # left organs are this much lighter than right ones, so the pair is told apart


def _rgb(color255: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color255[0] / 255.0, color255[1] / 255.0, color255[2] / 255.0)


def default_color(index: int, name: str | None = None) -> tuple[float, float, float]:
    """Colour (RGB in 0..1) for the ``index``-th segment, or the organ colour for a known name.

    Names are compared by their organ key (`organ_names`), so "Kidney_left" and "left kidney"
    get the kidney colour, a left organ a lighter shade of it than the right one; unknown names
    fall back to a fixed 20-colour palette cycled by ``index``.
    """
    if name:
        words, side = organ_words(name)
        for key in (words_key(words, side), words_key(words, None)):
            if key in _BY_KEY:
                rgb = _rgb(_BY_KEY[key])
                if side == "left" and not key.endswith(" left"):
                    rgb = tuple(c + (1.0 - c) * _LEFT_TINT for c in rgb)
                return (round(rgb[0], 6), round(rgb[1], 6), round(rgb[2], 6))
    return _rgb(_PALETTE_255[index % len(_PALETTE_255)])
