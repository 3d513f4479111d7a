"""Normalisation and hashing of identifiers (``destinations.identity``)."""

from __future__ import annotations

import hashlib

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from destinations.identity import (
    COUNTRIES,
    hashed_identifiers,
    md5_hex,
    meta_phone,
    normalise_email,
    normalise_phone,
    sha256_hex,
)

# --- hashing -------------------------------------------------------------------------------


def test_sha256_published_vector() -> None:
    # the example hash the platforms' guides show for "test@example.com"
    expected = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    assert sha256_hex("test@example.com") == expected
    assert sha256_hex("+61412345678") == hashlib.sha256(b"+61412345678").hexdigest()


def test_md5_is_lowercase_hex_of_utf8() -> None:
    assert md5_hex("test@example.com") == "55502f40dc8b7c769880b10874abc9d0"
    assert md5_hex("jürgen@example.de") == hashlib.md5("jürgen@example.de".encode()).hexdigest()


def test_meta_phone_drops_plus() -> None:
    assert meta_phone("+61412345678") == "61412345678"


# --- e-mail --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("test@example.com", "test@example.com"),
        ("  Test@Example.COM \n", "test@example.com"),
        ("\tfirst.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ],
)
def test_normalise_email(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "test",
        "test@",
        "@example.com",
        "test@example",
        "test@@example.com",
        "a@b@example.com",
        "te st@example.com",
        "test@.com",
        "test@example.",
        "a@x.com,b@y.com",
    ],
)
def test_normalise_email_rejects(raw: str | None) -> None:
    assert normalise_email(raw) is None


def test_already_hashed_value_is_not_an_email_or_phone() -> None:
    hashed = sha256_hex("test@example.com")
    assert normalise_email(hashed) is None
    assert normalise_email(hashed.upper()) is None
    assert normalise_phone(hashed, "US") is None
    assert normalise_phone(md5_hex("x"), "US") is None
    assert hashed_identifiers({"email": hashed, "phone": hashed}, ("email", "phone"), "US") == ()


# --- phone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("0412 345 678", "AU", "+61412345678"),
        ("412 345 678", "AU", "+61412345678"),
        ("61412345678", "AU", "+61412345678"),
        ("+61 (0)412 345 678", "AU", "+61412345678"),
        ("0011 44 20 7946 0958", "AU", "+442079460958"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("1-415-555-2671", "US", "+14155552671"),
        ("14155552671", "US", "+14155552671"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("+1 415 555 2671 ext. 123", "US", "+14155552671"),
        ("(415) 555-2671 x12", "us", "+14155552671"),
        ("+44 20 7946 0958", "AU", "+442079460958"),
        ("+44 (0)20 7946 0958", "US", "+442079460958"),
        ("0044 20 7946 0958", "AU", "+442079460958"),
        ("0044 20 7946 0958", "DE", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("021 123 4567", "NZ", "+64211234567"),
        ("030 123456", "DE", "+4930123456"),
        ("06 1234 5678", "IT", "+390612345678"),  # Italy keeps the 0: no trunk prefix
        ("+39 06 1234 5678", "IT", "+390612345678"),
        ("612 345 678", "ES", "+34612345678"),
        ("8 (812) 123-45-67", "RU", "+78121234567"),
        ("812 123 45 67", "RU", "+78121234567"),  # 8 is an area digit here, not the trunk
        ("090-1234-5678", "JP", "+819012345678"),
        ("9123 4567", "SG", "+6591234567"),
        ("081 234 5678", "ZA", "+27812345678"),
    ],
)
def test_normalise_phone(raw: str, country: str, expected: str) -> None:
    assert normalise_phone(raw, country) == expected


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        (None, "US"),
        ("", "US"),
        ("555-2671", "US"),  # a local number: the area code is missing
        ("+1 234", "US"),  # too short
        ("+1234567890123456", "US"),  # more than 15 digits
        ("1-800-FLOWERS", "US"),
        ("+0044 20 7946 0958", "GB"),
        ("0412 345 678 + 1", "AU"),
        ("０４１２ ３４５ ６７８", "AU"),  # full-width digits are not accepted
    ],
)
def test_normalise_phone_rejects(raw: str | None, country: str) -> None:
    assert normalise_phone(raw, country) is None


def test_unknown_default_country_is_named() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        normalise_phone("0412 345 678", "XX")
    with pytest.raises(ValueError, match="'XX'"):
        normalise_phone(None, "XX")


def test_required_countries_are_covered() -> None:
    required = "AU NZ US CA GB IE DE FR ES IT NL BE SE NO DK FI AT CH PL PT JP SG HK IN BR MX ZA AE"
    assert set(required.split()) <= set(COUNTRIES)
    for code, (calling_code, *_rest) in COUNTRIES.items():
        assert phonenumbers.country_code_for_region(code) == int(calling_code), code


_TYPES = (
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.MOBILE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.VOIP,
)
_EXAMPLES = [
    (region, example)
    for region in sorted(COUNTRIES)
    for kind in _TYPES
    if (example := phonenumbers.example_number_for_type(region, kind)) is not None
    and len(phonenumbers.format_number(example, PhoneNumberFormat.E164)) >= 9  # 8+ digits
]


_STYLES = (PhoneNumberFormat.NATIONAL, PhoneNumberFormat.INTERNATIONAL)


def test_every_example_number_agrees_with_phonenumbers() -> None:
    """libphonenumber's example number of each type, in each country, in both styles."""
    wrong = [
        (region, written, got, e164)
        for region, number in _EXAMPLES
        for style in _STYLES
        if (got := normalise_phone(written := phonenumbers.format_number(number, style), region))
        != (e164 := phonenumbers.format_number(number, PhoneNumberFormat.E164))
    ]
    assert wrong == []


@pytest.mark.parametrize("region", sorted(COUNTRIES))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_normalise_phone_agrees_with_phonenumbers(region: str, data: st.DataObject) -> None:
    """Valid numbers (example numbers with random last digits), written the way
    libphonenumber formats them nationally and internationally, normalise to its E.164."""
    number = data.draw(st.sampled_from([n for r, n in _EXAMPLES if r == region]))
    tail = data.draw(st.text("0123456789", min_size=1, max_size=6))
    significant = phonenumbers.national_significant_number(number)
    candidate = phonenumbers.parse(f"+{number.country_code}{significant[: -len(tail)]}{tail}")
    e164 = phonenumbers.format_number(candidate, PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number_for_region(candidate, region) or len(e164) < 9:
        candidate, e164 = number, phonenumbers.format_number(number, PhoneNumberFormat.E164)
    written = phonenumbers.format_number(candidate, data.draw(st.sampled_from(_STYLES)))
    assert normalise_phone(written, region) == e164, written


# --- records -------------------------------------------------------------------------------


def test_hashed_identifiers_format_and_order() -> None:
    member = {"phone": "0412 345 678", "email": " Test@Example.com "}
    email = "email_sha256:" + hashlib.sha256(b"test@example.com").hexdigest()
    phone = "phone_sha256:" + hashlib.sha256(b"+61412345678").hexdigest()
    assert hashed_identifiers(member, ("email", "phone"), "AU") == (email, phone)
    assert hashed_identifiers(member, ("phone", "email"), "AU") == (phone, email)
    assert hashed_identifiers(member, ("email",), "AU") == (email,)


def test_hashed_identifiers_skips_unusable_and_missing() -> None:
    accepted = ("email", "phone")
    assert hashed_identifiers({"email": "nope", "phone": "+61412345678"}, accepted, "AU") == (
        "phone_sha256:" + hashlib.sha256(b"+61412345678").hexdigest(),
    )
    assert hashed_identifiers({"email": None}, accepted, "AU") == ()
    assert hashed_identifiers({}, accepted, "AU") == ()


def test_hashed_identifiers_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="'madid'"):
        hashed_identifiers({"madid": "x"}, ("madid",), "US")
