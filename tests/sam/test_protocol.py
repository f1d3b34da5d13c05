"""`Session` and `RemoteSession` offer the same verbs with the same signatures."""

import inspect

import pytest

from sam2refine.remote.client import RemoteSession
from sam2refine.sam.protocol import SessionLike
from sam2refine.sam.session import Session

VERBS = [name for name, member in vars(SessionLike).items()
         if not name.startswith("_") and callable(member)]


def _parameters(cls, name):
    signature = inspect.signature(getattr(cls, name))
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize("cls", [Session, RemoteSession])
@pytest.mark.parametrize("verb", VERBS)
def test_both_sessions_have_the_protocol_verbs_with_its_signature(cls, verb):
    ours, protocol = _parameters(cls, verb), _parameters(SessionLike, verb)
    assert ours[: len(protocol)] == protocol, verb
    extra = ours[len(protocol):]  # options of one side only: keyword-only, with a default
    assert all(kind == inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty
               for _, kind, default in extra), verb


@pytest.mark.parametrize("cls", [Session, RemoteSession])
def test_both_sessions_return_what_the_protocol_says(cls):
    for verb in VERBS:
        ours = inspect.signature(getattr(cls, verb)).return_annotation
        theirs = inspect.signature(getattr(SessionLike, verb)).return_annotation
        assert ours == theirs, verb


def test_a_session_instance_satisfies_the_protocol(tiny_model, phantom):
    assert isinstance(Session(tiny_model, phantom), SessionLike)
    assert len(VERBS) >= 12
