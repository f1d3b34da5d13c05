"""Fuzzing the prompts file and the server's JSON bodies (hypothesis): thousands of documents
near the schema, mutated field by field. Every one is either accepted (and then holds only
valid values) or refused with a one-line engine error; nothing ends in a traceback, and the
server never answers 5xx."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam2refine.errors import SAM2RefineError
from sam2refine.remote.server import ServerThread, create_app
from sam2refine.remote.wire import encode_mask, volume_to_bytes
from sam2refine.sam.prompts_file import check_against, read_prompts
from tests.conftest import make_phantom

VOLUME = make_phantom((6, 24, 28))
KEYS = ["coordinates", "segments", "range", "name", "label", "color", "points", "boxes",
        "masks", "position", "positive", "corners", "slice", "file", "value", "mode", "slices",
        "rnage", "positon", "segmnets", "labels", "obj", "obj_id", "frame", "frames",
        "corner_a", "corner_b", "coords", "locked", "objects", "frame_range", "mask", "source"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1.7, -0.0, 1e308]),
    st.text(max_size=12), st.sampled_from(["ijk", "lps", "ras", "slice", "refine", "exact",
                                           "liver", "no", "coarse.nii.gz", "", "\n"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
coordinate = st.floats(-3, 40, allow_nan=False)
triple = st.lists(coordinate, min_size=3, max_size=3)
valid_point = st.fixed_dictionaries({"position": triple}, optional={"positive": st.booleans()})
valid_box = st.fixed_dictionaries({"corners": st.tuples(triple, triple)},
                                  optional={"slice": st.integers(0, 5)})
valid_mask = st.fixed_dictionaries({"file": st.just("coarse.nii.gz")}, optional={
    "value": st.integers(1, 2), "mode": st.sampled_from(["refine", "exact"]),
    "slices": st.lists(st.integers(0, 5), min_size=1, max_size=2)})


@st.composite
def valid_segment(draw, name: str, label: int | None) -> dict:
    seg: dict = {"name": name}
    if label is not None:
        seg["label"] = label
    kinds = draw(st.sets(st.sampled_from(["points", "boxes", "masks"]), min_size=1))
    for kind, item in (("points", valid_point), ("boxes", valid_box), ("masks", valid_mask)):
        if kind in kinds:
            seg[kind] = draw(st.lists(item, min_size=1, max_size=2))
    if draw(st.booleans()):
        first = draw(st.integers(0, 5))
        seg["range"] = [first, draw(st.integers(first, 5))]
    if draw(st.booleans()):
        seg["color"] = draw(st.lists(st.floats(0, 1), min_size=3, max_size=3))
    if draw(st.booleans()):
        seg["coordinates"] = draw(st.sampled_from(["ijk", "lps", "ras"]))
    return seg


@st.composite
def valid_document(draw) -> dict:
    names = draw(st.lists(st.sampled_from(["liver", "spleen", "Läsion – rechts", "肝臓",
                                           "kidney_left"]), min_size=1, max_size=3, unique=True))
    labels = draw(st.lists(st.integers(1, 65535), min_size=len(names), max_size=len(names),
                           unique=True))
    doc = {"segments": [draw(valid_segment(n, v if draw(st.booleans()) else None))
                        for n, v in zip(names, labels)]}
    if draw(st.booleans()):
        doc["coordinates"] = draw(st.sampled_from(["ijk", "lps", "ras"]))
    return doc


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw, base: st.SearchStrategy) -> object:
    """A valid document with 0-2 hostile edits: a value replaced, a key misspelt or added,
    a key removed."""
    doc = json.loads(json.dumps(draw(base)))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key, action = path[-1], draw(st.sampled_from(["value", "value", "rename", "drop",
                                                      "extra"]))
        if action == "value":
            parent[key] = draw(values)
        elif action == "rename" and isinstance(key, str):
            parent[draw(st.sampled_from(KEYS))] = parent.pop(key)
        elif action == "drop":
            parent.pop(key)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(values)
    return doc


documents = st.one_of(mutated(valid_document()), values)


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, SAM2RefineError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text and "\n" not in text.strip() and "Traceback" not in text, text


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    voxels = np.zeros(VOLUME.voxels.shape, np.uint8)
    voxels[2:4, 8:16, 8:16] = 1
    import SimpleITK as sitk

    sitk.WriteImage(VOLUME.with_voxels(voxels).to_sitk(), str(folder / "coarse.nii.gz"))
    return folder


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_prompts_file_never_ends_in_a_traceback(document, prompts_dir):
    path = prompts_dir / "prompts.json"
    path.write_text(json.dumps(document), "utf-8")
    try:
        prompts = read_prompts(path)
        check_against(prompts, VOLUME, VOLUME.voxels.shape[0])
    except Exception as exc:  # noqa: BLE001 - anything but a one-line engine error fails
        _one_line(exc)
        return
    for seg in prompts.segments:  # what is accepted is valid data
        assert isinstance(seg.name, str) and seg.name.strip()
        assert seg.label is None or (type(seg.label) is int and 1 <= seg.label <= 65535)
        for position, positive in seg.points:
            assert len(position) == 3 and all(math.isfinite(v) for v in position)
            assert positive in (0, 1)
        for a, c, frame in seg.boxes:
            assert len(a) == len(c) == 3 and (frame is None or type(frame) is int)
        assert seg.coordinates in ("ijk", "lps", "ras")


# ----- the server's JSON bodies ------------------------------------------------------------
ROUTES = ["add_object", "object", "remove_object", "set_locked", "add_points", "set_box",
          "set_mask", "set_mask_volume", "clear_prompts", "slice_mask", "object_mask",
          "propagate"]
MASK = encode_mask(np.ones((24, 28), bool))
obj_ref = st.sampled_from(["organ", 1, "other", 99])
frame = st.integers(-1, 7)
VALID_BODIES = {
    "add_object": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=8)},
                                        optional={"obj_id": st.integers(0, 70000)}),
    "object": st.fixed_dictionaries({"obj": obj_ref}),
    "remove_object": st.fixed_dictionaries({"obj": obj_ref}),
    "set_locked": st.fixed_dictionaries({"obj": obj_ref, "locked": st.booleans()}),
    "add_points": st.integers(1, 3).flatmap(lambda n: st.fixed_dictionaries({
        "obj": obj_ref, "points": st.lists(triple, min_size=n, max_size=n),
        "labels": st.lists(st.integers(0, 1), min_size=n, max_size=n)},
        optional={"coords": st.sampled_from(["ijk", "lps", "ras", "slice"])})),
    "set_box": st.fixed_dictionaries({"obj": obj_ref, "corner_a": triple, "corner_b": triple},
                                     optional={"frame": frame}),
    "set_mask": st.fixed_dictionaries({"obj": obj_ref, "frame": frame, "mask": st.just(MASK)},
                                      optional={"mode": st.sampled_from(["refine", "exact"])}),
    "set_mask_volume": st.fixed_dictionaries(
        {"obj": obj_ref, "mask": st.just(encode_mask(np.ones(VOLUME.voxels.shape, bool)))},
        optional={"frames": st.lists(frame, min_size=1, max_size=2)}),
    "clear_prompts": st.fixed_dictionaries({"obj": obj_ref, "frame": frame}),
    "slice_mask": st.fixed_dictionaries({"obj": obj_ref, "frame": frame}),
    "object_mask": st.fixed_dictionaries({"obj": obj_ref}),
    "propagate": st.fixed_dictionaries({}, optional={
        "objects": st.lists(obj_ref, max_size=2),
        "frame_range": st.lists(frame, min_size=2, max_size=2)}),
}
ROUTES = list(VALID_BODIES)
routes_and_bodies = st.sampled_from(ROUTES).flatmap(
    lambda r: st.tuples(st.just(r), st.one_of(mutated(VALID_BODIES[r]), values)))


@pytest.fixture(scope="module")
def server(tiny_model):
    with ServerThread(create_app(tiny_model, max_sessions=2)) as url:
        http = requests.Session()
        sid = http.post(f"{url}/sessions", data=volume_to_bytes(VOLUME),
                        timeout=60).json()["session_id"]
        http.post(f"{url}/sessions/{sid}/add_object", json={"name": "organ"}, timeout=60)
        yield url, http, sid


def _post(server, sid: str, route: str, body: object) -> None:
    url, http, _ = server
    answer = http.post(f"{url}/sessions/{sid}/{route}", data=json.dumps(body),
                       headers={"Content-Type": "application/json"}, timeout=120)
    assert answer.status_code < 500, (route, body, answer.status_code, answer.text[:300])
    if answer.status_code >= 400:
        data = answer.json()
        assert set(data) == {"error", "type"} and "\n" not in data["error"].strip(), data
        assert "Traceback" not in data["error"]


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=routes_and_bodies)
def test_server_bodies_are_validated_before_any_work(case, server):
    """Against a session that does not exist: whatever the body, 404 or a 4xx answer."""
    _post(server, "no-such-session", *case)


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=routes_and_bodies.filter(lambda c: c[0] not in ("remove_object", "propagate")))
def test_server_bodies_on_a_real_session_never_fail_with_500(case, server):
    """On a live session with the model: valid bodies run, the rest are 4xx, never 500."""
    _post(server, server[2], *case)
