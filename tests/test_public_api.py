import gateway
from gateway.core import errors


def test_every_error_is_a_provenance_error_with_a_reason():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ProvenanceError)
        assert cls("x").reason == cls.default_reason


def test_verification_and_unavailable_are_disjoint():
    assert not issubclass(errors.UnavailableError, errors.VerificationError)
    assert errors.SignatureError("bad", reason="bad-signature").reason == "bad-signature"


def test_version_is_exported():
    assert gateway.__all__ == ["__version__"]
