"""Which mailboxes a verified card may open: a mapping file (IdNat_PS -> mailboxes) or a template.

Owns the decision for proxy-side SASL EXTERNAL: given the card identity and the authorization
identity the client asked for (possibly none), the mailbox to log in to, or the reason to refuse.
Pure: the mapping file is read by the config loader; nothing here touches files or sockets.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Identity fields a template may use (``identity_fields`` names).
TEMPLATE_FIELDS = ("idnat_ps", "idnat_struct", "upn", "serial", "card_serial")
_MAILBOX = re.compile(r"^[^\s\0\"\\]{1,254}$")


@dataclass(frozen=True, slots=True)
class LoginRule:
    """The mapping (IdNat_PS -> allowed mailboxes, the first is the default) or the template."""

    mapping: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    template: str | None = None
    source: str = ""          # file name or "template", for logs


@dataclass(frozen=True, slots=True)
class LoginDecision:
    """The mailbox to open, or why not (``reason`` is stable, for logs and tests)."""

    mailbox: str | None
    reason: str
    detail: str = ""


def template_fields(template: str) -> list[str]:
    """The field names a template uses (for config validation)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def allowed(rule: LoginRule, identity: Mapping[str, str]) -> tuple[str, ...]:
    """Every mailbox the card may open, default first."""
    if rule.template is not None:
        try:
            mailbox = rule.template.format_map({k: identity[k] for k in template_fields(rule.template)})
        except KeyError:
            return ()
        return (mailbox,) if _MAILBOX.match(mailbox) else ()
    key = identity.get("idnat_ps")
    return rule.mapping.get(key, ()) if key else ()


def decide(rule: LoginRule, identity: Mapping[str, str], authzid: str) -> LoginDecision:
    """The mailbox for a card asking for ``authzid`` ("" = its default)."""
    mailboxes = allowed(rule, identity)
    if not mailboxes:
        return LoginDecision(None, "not_mapped", f"no mailbox for IdNat_PS {identity.get('idnat_ps')!r}")
    if not authzid:
        return LoginDecision(mailboxes[0], "ok")
    for m in mailboxes:
        if m.lower() == authzid.lower():
            return LoginDecision(m, "ok")
    return LoginDecision(None, "authzid_not_allowed",
                         f"{authzid!r} is not a mailbox of IdNat_PS {identity.get('idnat_ps')!r}")
