"""Tests for queues.types: Capabilities and SharedEvent encoding."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queues.types import Capabilities, SharedEvent


def test_capabilities_default_is_false() -> None:
    assert Capabilities().deactivation_peer_events is False
    assert Capabilities().stream_typing_notifications is False
    assert Capabilities().to_dict() == {
        "deactivation_peer_events": False,
        "stream_typing_notifications": False,
    }


def test_capabilities_reads_known_bool_keys_and_ignores_unknown() -> None:
    caps = Capabilities.from_client_capabilities(
        {"deactivation_peer_events": True, "notification_settings_null": "whatever"}
    )
    assert caps == Capabilities(deactivation_peer_events=True)
    assert caps.to_dict() == {
        "deactivation_peer_events": True,
        "stream_typing_notifications": False,
    }
    typing = Capabilities.from_client_capabilities({"stream_typing_notifications": True})
    assert typing == Capabilities(stream_typing_notifications=True)
    assert Capabilities.from_client_capabilities({}) == Capabilities()


@pytest.mark.parametrize("bad", [1, 0, "true", None, [True]])
def test_capabilities_rejects_non_bool_known_key(bad: object) -> None:
    with pytest.raises(ValueError, match="client_capabilities.deactivation_peer_events must be"):
        Capabilities.from_client_capabilities({"deactivation_peer_events": bad})


def test_capabilities_is_frozen() -> None:
    caps = Capabilities()
    with pytest.raises(AttributeError):
        caps.deactivation_peer_events = True  # type: ignore[misc]


def test_shared_event_fields() -> None:
    event = SharedEvent(3, 7, {"type": "realm_user", "op": "update"}, [1, 2, 2], legacy_skip=True)
    assert event.realm_id == 3
    assert event.seq == 7
    assert event.type == "realm_user"
    assert event.user_ids == frozenset({1, 2})
    assert event.legacy_skip is True
    assert "seq=7" in repr(event)


def test_shared_event_keeps_given_frozenset() -> None:
    targets = frozenset({4, 5})
    assert SharedEvent(1, 1, {"type": "x"}, targets).user_ids is targets


def test_shared_event_rejects_id_in_data() -> None:
    with pytest.raises(ValueError, match="must not contain 'id'"):
        SharedEvent(1, 1, {"type": "x", "id": 3}, [1])


def test_encoded_is_compact_and_cached() -> None:
    event = SharedEvent(1, 1, {"type": "x", "ids": [1, 2]}, [1])
    assert event.encoded == b'{"type":"x","ids":[1,2]}'
    assert event.encoded is event.encoded


def test_encoded_rejects_nan() -> None:
    with pytest.raises(ValueError):
        _ = SharedEvent(1, 1, {"type": "x", "v": float("nan")}, [1]).encoded


def test_encode_with_id_matches_json_dumps() -> None:
    data = {"type": "subscription", "op": "peer_remove", "stream_ids": [1], "user_ids": [9]}
    event = SharedEvent(1, 1, data, [1])
    for event_id in (0, 5, 123456):
        encoded = event.encode_with_id(event_id)
        assert json.loads(encoded) == {**data, "id": event_id}
        assert encoded == json.dumps({**data, "id": event_id}, separators=(",", ":")).encode()
        # "id" is the last key.
        assert list(json.loads(encoded))[-1] == "id"


def test_encode_with_id_empty_data() -> None:
    event = SharedEvent(1, 1, {}, [1])
    assert event.encode_with_id(4) == b'{"id":4}'
    assert json.loads(event.encode_with_id(4)) == json.loads(json.dumps({"id": 4}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    data=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "id"), json_values),
    event_id=st.integers(min_value=0, max_value=10**9),
)
def test_encode_with_id_property(data: dict[str, object], event_id: int) -> None:
    encoded = SharedEvent(1, 1, data, [1]).encode_with_id(event_id)
    assert json.loads(encoded) == json.loads(json.dumps({**data, "id": event_id}))
