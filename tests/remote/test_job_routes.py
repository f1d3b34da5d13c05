"""Server jobs for clients that never wait (`remote.job_routes` + `remote.stepwise`): chunked
uploads, sessions opened as jobs, session verbs as jobs with the same answers as their
blocking routes, Auto-segment as a cancellable job whose answer equals the in-process
pipeline's. Real HTTP on loopback, random-init tiny model at 256 px."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sam2refine.auto.pipeline import auto_segment
from sam2refine.errors import CancelledError
from sam2refine.remote.server import ServerThread, create_app
from sam2refine.remote.stepwise import (
    SessionJobs,
    Upload,
    file_chunks,
    open_session_job,
    volume_chunks,
)
from sam2refine.remote.wire import (
    RequestError,
    UploadTooLargeError,
    unpack_arrays,
    volume_to_bytes,
)
from sam2refine.sam.session import Session
from tests.conftest import make_phantom

MEMBERS = ("voxels", "spacing", "origin", "direction")


@pytest.fixture(scope="module")
def server(tiny_model):
    with ServerThread(create_app(tiny_model, max_upload_bytes=4 << 20)) as url:
        yield url


def _client(url):
    from sam2refine.remote.client import Client

    return Client(url)


def _session(url, volume, axis="axial"):
    client = _client(url)
    upload = Upload(client, volume_chunks(volume, raw_chunk_bytes=10_000))
    steps = 1
    while not upload.step():
        steps += 1
    assert steps > 3  # really sent in pieces
    return open_session_job(client, upload.upload_id, volume, axis).wait(timeout=60)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, bool])
def test_streamed_volume_is_the_npz_the_server_reads(dtype):
    volume = make_phantom()
    volume = volume.with_voxels(volume.voxels.astype(dtype) if dtype is not bool
                                else volume.voxels > 100)
    pieces = list(volume_chunks(volume, raw_chunk_bytes=3_000))
    assert len(pieces) > 10
    streamed = unpack_arrays(b"".join(pieces), MEMBERS, 1 << 30)
    whole = unpack_arrays(volume_to_bytes(volume), MEMBERS, 1 << 30)
    for name in MEMBERS:
        assert streamed[name].dtype == whole[name].dtype
        np.testing.assert_array_equal(streamed[name], whole[name])


def test_verb_jobs_answer_what_the_blocking_routes_answer(server, tiny_model):
    phantom = make_phantom()
    remote = _session(server, phantom)
    np.testing.assert_array_equal(remote.volume.voxels, phantom.voxels)
    jobs = SessionJobs(remote)
    local = Session(tiny_model, phantom)
    obj = jobs.add_object("organ").wait()
    assert obj == local.add_object("organ")
    job = jobs.add_points(obj, [[19, 20, 6], [25, 22, 6]], [1, 0])
    assert job.cancellable is False  # a prompt cannot be stopped half-way
    (got,) = job.wait()
    (want,) = local.add_points(obj, [[19, 20, 6], [25, 22, 6]], [1, 0])
    assert got.frame == want.frame == 6
    np.testing.assert_array_equal(got.mask, want.mask)
    box = jobs.set_box(obj, (10, 12, 4), (30, 30, 4)).wait()
    np.testing.assert_array_equal(box.mask, local.set_box(obj, (10, 12, 4), (30, 30, 4)).mask)
    propagation = jobs.propagate([obj], (3, 7))
    assert propagation.cancellable
    assert propagation.wait() == local.propagate([obj], (3, 7))
    np.testing.assert_array_equal(jobs.object_mask(obj).wait(), local.object_mask(obj))
    info = jobs.object(obj).wait()
    assert info.prompted_frames == [4, 6] and set(info.tracked_frames) == {3, 5, 7}
    jobs.clear_prompts(obj, 4).wait()
    assert jobs.object(obj).wait().prompted_frames == [6]
    # Wrong arguments are refused the way the blocking routes refuse them.
    with pytest.raises(RequestError, match="Malformed 'add_points' arguments"):
        jobs.verb("add_points", {"obj": obj, "points": "x"}).wait()
    with pytest.raises(RequestError, match="not a session verb"):
        jobs.verb("propagate", {})
    with pytest.raises(Exception, match="outside the volume"):
        jobs.add_points(obj, [[19, 20, 60]], [1]).wait()
    remote.close()


def test_requests_answer_at_once_while_the_model_works(server):
    remote = _session(server, make_phantom(shape_kji=(24, 40, 48)))
    jobs = SessionJobs(remote)
    obj = jobs.add_object("organ").wait()
    jobs.add_points(obj, [[19, 20, 12]], [1]).wait()
    propagation = jobs.propagate([obj])
    slowest = 0.0
    while not propagation.finished:
        started = time.perf_counter()
        propagation.poll()
        queued = jobs.add_points(obj, [[19, 20, 2]], [1])  # queued behind the propagation
        slowest = max(slowest, time.perf_counter() - started)
        if propagation.finished or queued.finished:
            break
        time.sleep(0.05)
        if propagation.progress[0] >= 3:
            break
    assert slowest < 0.5, f"a request waited {slowest:.2f} s for the model"
    propagation.cancel()
    with pytest.raises(CancelledError):
        propagation.wait()
    remote.close()


def test_uploads_are_bounded(server):
    client = _client(server)
    upload = Upload(client, iter([b"x" * (3 << 20), b"y" * (2 << 20)]))
    with pytest.raises(UploadTooLargeError):
        while not upload.step():
            pass
    with pytest.raises(RequestError, match="No upload"):
        open_session_job(client, "nonexistent", make_phantom())


@pytest.fixture(scope="module")
def label_file(totalseg_dir, tmp_path_factory):
    """The shared CT's labels cut to a few slices of the gallbladder (fast to refine)."""
    import shutil

    import SimpleITK as sitk

    from sam2refine.image.reading import load_volume

    labels = load_volume(totalseg_dir / "example_seg.nii.gz")
    short = np.zeros_like(labels.voxels)
    short[7:10][labels.voxels[7:10] == 4] = 4
    folder = tmp_path_factory.mktemp("labels")
    shutil.copy(totalseg_dir / "labels.json", folder / "labels.json")
    sitk.WriteImage(labels.with_voxels(short).to_sitk(), str(folder / "short.nii.gz"))
    return folder / "short.nii.gz"


def _names(folder):
    from sam2refine.io.label_names import read_label_names

    return read_label_names(folder / "labels.json")


def test_auto_segment_job_equals_the_pipeline_in_process(server, tiny_model, totalseg_dir,
                                                         label_file):
    from sam2refine.image.reading import load_volume

    ct = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    remote = _session(server, ct)
    client = remote.client
    upload = Upload(client, file_chunks(label_file, 20_000))
    while not upload.step():
        pass
    names = _names(label_file.parent)
    job = SessionJobs(remote).auto_segment(upload.upload_id, label_file.name, names=names,
                                           organs=["gallbladder"], stages=2, margin=1)
    assert job.cancellable
    seen = []
    while not job.poll_finished():
        seen.append(job.progress)
        time.sleep(0.05)
    outcome = job.result()
    want = auto_segment(Session(tiny_model, ct), None, label_file, names=names,
                        organs=["gallbladder"], stages=2, margin=1)
    assert [s.name for s in outcome.stages] == [s.name for s in want.stages]
    for got, expected in zip(outcome.stages, want.stages):
        np.testing.assert_array_equal(got.labels, expected.label_volume.voxels)
        assert got.boxes == {o: {f: tuple(b) for f, b in bs.items()}
                             for o, bs in expected.boxes.items()}
    plan, expected = outcome.prompts["gallbladder"], want.prompts["gallbladder"]
    assert (plan.obj_id, plan.frame_range, plan.key_frames, plan.mask_frames) == (
        expected.obj_id, tuple(expected.frame_range), expected.key_frames, expected.mask_frames)
    assert outcome.final.labels.any() and outcome.source == want.source
    assert max(seen, default=(0, 0))[1] == 300  # progress as in-process: (stage * 100, 300)
    remote.close()


def test_auto_segment_job_can_be_cancelled(server, totalseg_dir, label_file):
    from sam2refine.image.reading import load_volume

    remote = _session(server, load_volume(totalseg_dir / "example_ct_sm.nii.gz"))
    upload = Upload(remote.client, file_chunks(label_file))
    while not upload.step():
        pass
    job = SessionJobs(remote).auto_segment(upload.upload_id, label_file.name,
                                           names=_names(label_file.parent), stages=2, margin=1)
    job.cancel()
    with pytest.raises(CancelledError):
        job.wait(timeout=120)
    with pytest.raises(RequestError, match="file name"):  # never a path on the server
        remote.client.request("POST", f"/sessions/{remote.session_id}/auto", json={
            "source_upload": "x", "source_name": "../../etc/pass wd"})
    remote.close()
