"""Image ids: sha256 of the bytes, or a validated caller-supplied id."""

from __future__ import annotations

import hashlib

import pytest

from schemas.image_id import InvalidImageId, content_id, image_id_for, validate_image_id


def test_derived_id_is_sha256_hex_of_the_bytes() -> None:
    data = b"\xff\xd8\xff\xe0 some jpeg bytes"
    assert image_id_for(data) == hashlib.sha256(data).hexdigest() == content_id(data)
    assert len(image_id_for(data)) == 64


def test_derived_id_is_deterministic_and_content_sensitive() -> None:
    assert image_id_for(b"abc") == image_id_for(b"abc")
    assert image_id_for(b"abc") != image_id_for(b"abd")
    # Known vector, so a change of hash function cannot slip through.
    assert (
        image_id_for(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_derived_id_is_a_valid_id() -> None:
    assert validate_image_id(image_id_for(b"")) == image_id_for(b"")


@pytest.mark.parametrize(
    "supplied", ["cam-7/2024-05-01T10:00:00Z", "a", "x" * 200, "u@h+1=2.jpg", "A_b-c"]
)
def test_supplied_id_is_used_verbatim(supplied: str) -> None:
    assert image_id_for(b"whatever", supplied) == supplied


@pytest.mark.parametrize(
    "supplied",
    [
        "",
        "abc\n",
        "x" * 201,
        "has space",
        "tab\t",
        "new\nline",
        "caméra",
        "semi;colon",
        "quote'",
        "é",
    ],
)
def test_invalid_supplied_id_is_rejected(supplied: str) -> None:
    with pytest.raises(InvalidImageId) as err:
        image_id_for(b"data", supplied)
    assert "image id" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_key_spelled_like_a_derived_id_gets_its_own_row() -> None:
    from schemas.image_id import row_id, validate_row_id

    bad = b"\xff\xfe"
    derived = row_id(bad, ("images.raw", 0, 1))
    # Publishing that derived id as a key must not land on the bad key's row.
    assert row_id(derived.encode(), ("images.raw", 0, 2)) != derived
    keyless = row_id(None, ("images.raw", 4, 0))
    assert row_id(keyless.encode(), ("images.raw", 0, 3)) != keyless
    with pytest.raises(InvalidImageId, match="reserved"):
        validate_image_id(derived)
    # Rows may be stored under derived ids, and only under well-formed ones.
    assert validate_row_id(derived) == derived and validate_row_id(keyless) == keyless
    with pytest.raises(InvalidImageId):
        validate_row_id("key-sha256:not-hex")
