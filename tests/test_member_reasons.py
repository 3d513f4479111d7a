"""A destination's reasons for refusing members are printed, recorded in the state and sent
in notifications: whatever identifiers a vendor echoes in them never get that far."""

from __future__ import annotations

from destinations.base import Outcome
from destinations.redaction import MAX_REASON, member_reason


def test_reasons_lose_emails_and_phones_and_keep_the_rest():
    out = Outcome(
        rejected={"k1": "user10@example.com bounced", "k2": "+61 412-345-678 not a mobile"},
        retry={"k3": "mailbox of a.b+c@mail.example.org full, later"},
        detail="refused 2 (first: user10@example.com)",
    )
    assert out.rejected == {"k1": "<email> bounced", "k2": "<phone> not a mobile"}
    assert out.retry == {"k3": "mailbox of <email> full, later"}
    assert out.detail == "refused 2 (first: <email>)"
    # short numbers (codes, counts), dates and digits inside a hash or an id are not phones
    for kept in (
        "error 4012: 3 of 12 fields invalid",
        "retry after 2026-12-02 10:42",
        "email_sha256:4b2a0c12345678901ab is a duplicate",
        "id x1234567890",
    ):
        assert member_reason(kept) == kept
    assert member_reason("call 0412 345 678 or (02) 9876 5432") == "call <phone> or <phone>"


def test_a_long_reason_is_cut():
    reason = member_reason("x" * 5000)
    assert len(reason) == MAX_REASON and reason.endswith("...")
