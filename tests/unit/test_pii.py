from flywheel.pii import redact_text


def test_emails_phones_cards_are_redacted():
    text, counts = redact_text("mail anna.1@example.com or call +1 415-555-0132 / (212) 555-0199 / +44 20 7946 0958;"
                               " card 4111 1111 1111 1111")
    assert text == "mail <EMAIL> or call <PHONE> / <PHONE> / <PHONE>; card <CARD>"
    assert counts == {"email": 1, "phone": 3, "card": 1}


def test_business_identifiers_are_not_pii():
    for text in ("order A-100234", "refund $342.50 on 2026-11-24", "tracking 1Z999AA10123456784",
                 "invoice INV-2026-12345 of 1200.00 EUR", "card-like but not Luhn 4111 1111 1111 1112"):
        assert redact_text(text) == (text, {})
