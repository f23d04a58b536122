"""``sniproxy.auth.login`` (which mailbox a card may open) and ``sniproxy.auth.sasl`` (the SASL encodings the
proxy speaks): pure functions, tested directly. Written for what mutation testing found unguarded (issue 11):
the template rules had no unit test at all."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from sniproxy.auth.login import TEMPLATE_FIELDS, LoginDecision, LoginRule, allowed, decide, template_fields
from sniproxy.auth.sasl import SaslError, decode_external, plain_response, xtext

CARD = {"idnat_ps": "810001234567", "idnat_struct": "10B0012345", "upn": "810001234567@carte-cps.fr",
        "serial": "1a2b", "card_serial": "8025000001/2600000001"}


def test_template_fields_are_the_identity_fields() -> None:
    assert TEMPLATE_FIELDS == ("idnat_ps", "idnat_struct", "upn", "serial", "card_serial")
    assert template_fields("{idnat_ps}.{idnat_struct}@x") == ["idnat_ps", "idnat_struct"]
    assert template_fields("fixed@x") == []


@pytest.mark.parametrize("field", TEMPLATE_FIELDS)
def test_a_template_on_each_field(field: str) -> None:
    rule = LoginRule(template=f"{{{field}}}@mss.example", source="template")
    mailbox = CARD[field] + "@mss.example"
    assert allowed(rule, CARD) == (mailbox,)
    assert decide(rule, CARD, "") == LoginDecision(mailbox, "ok")


def test_a_template_field_the_card_lacks_opens_nothing() -> None:
    rule = LoginRule(template="{idnat_struct}@x")
    assert allowed(rule, {"idnat_ps": "1"}) == ()
    d = decide(rule, {"idnat_ps": "1"}, "")
    assert d.mailbox is None and d.reason == "not_mapped" and d.detail == "no mailbox for IdNat_PS '1'"


@pytest.mark.parametrize("value", ["a b", "a\tb", "a\0b", 'a"b', "a\\b", "x" * 250])
def test_a_template_result_that_is_not_a_mailbox_opens_nothing(value: str) -> None:
    assert allowed(LoginRule(template="{idnat_ps}@mss.fr"), {"idnat_ps": value}) == ()


def test_mailbox_length_limit_is_254() -> None:
    rule = LoginRule(template="{idnat_ps}")
    assert allowed(rule, {"idnat_ps": "a" * 254}) == ("a" * 254,)
    assert allowed(rule, {"idnat_ps": "a" * 255}) == ()
    assert allowed(rule, {"idnat_ps": "a"}) == ("a",)


def test_mapping_rules_and_authzid_choice() -> None:
    rule = LoginRule(mapping={"810001234567": ("alice@x", "Team@x")}, source="map.yaml")
    assert decide(rule, CARD, "") == LoginDecision("alice@x", "ok")
    assert decide(rule, CARD, "team@X") == LoginDecision("Team@x", "ok")
    d = decide(rule, CARD, "bob@x")
    assert d == LoginDecision(None, "authzid_not_allowed", "'bob@x' is not a mailbox of IdNat_PS '810001234567'")
    assert allowed(rule, {"idnat_ps": ""}) == () and allowed(rule, {}) == ()


def test_rules_and_decisions_are_values() -> None:
    assert LoginRule().source == "" and LoginRule().template is None and LoginRule().mapping == {}
    assert LoginDecision("m", "ok").detail == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoginRule().source = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoginDecision("m", "ok").reason = "x"  # type: ignore[misc]


# -- sasl ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("response", ["", "=", "  =  ", " "])
def test_external_without_authzid(response: str) -> None:
    assert decode_external(response) == ""


def test_external_authzid_decoded() -> None:
    assert decode_external(base64.b64encode("élise@x".encode()).decode()) == "élise@x"
    assert decode_external(base64.b64encode(b"XAVIER@X").decode()) == "XAVIER@X"


@pytest.mark.parametrize(("response", "message"), [
    ("!!", "response is not base64"),
    (base64.b64encode(b"\xff\xfe").decode(), "authorization identity is not UTF-8"),
    (base64.b64encode(b"a\0b").decode(), "authorization identity holds a control character"),
    (base64.b64encode(b"a\rb").decode(), "authorization identity holds a control character"),
    (base64.b64encode(b"a\nb").decode(), "authorization identity holds a control character"),
])
def test_external_refusals(response: str, message: str) -> None:
    with pytest.raises(SaslError) as exc:
        decode_external(response)
    assert str(exc.value) == message


def test_plain_response() -> None:
    assert base64.b64decode(plain_response("alice@x", "master", "pw")) == b"alice@x\0master\0pw"
    for args in (("a\0", "b", "c"), ("a", "b\0", "c"), ("a", "b", "c\0")):
        with pytest.raises(ValueError, match=r"^NUL in a PLAIN field$"):
            plain_response(*args)


def test_xtext_edges() -> None:
    assert xtext("!~az09") == "!~az09"                     # 33 and 126 are kept
    assert xtext(" ") == "+20" and xtext("\x7f") == "+7F" and xtext("\x1f") == "+1F"
    assert xtext("a+b=c") == "a+2Bb+3Dc"
    assert xtext("é") == "+C3+A9"
    assert xtext("[UNAVAILABLE]") == "[UNAVAILABLE]"
