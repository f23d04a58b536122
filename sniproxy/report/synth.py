"""Synthetic ``connection`` events shaped like the proxy's own (for the bench, the browser test, the docs).

A population of card holders migrates from the ``2bis`` flow to ``igcsante`` over the period, some of
them sending no SNI until they migrate, and 2TER cards give way to IGC Santé Fort ones. Deterministic
for a seed. Lines carry every field a real event carries (full identity included), so their length and
parse cost are those of a production log.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

_CPS = "OU=AC-CLASSE-1,O=GIP-CPS,C=FR"
_FORT = "CN=AC IGC-SANTE FORT PERSONNES,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"
_STANDARD = "CN=AC IGC-SANTE STANDARD PERSONNES,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"
_NAMES = {"imap": ("frontimap.mssante.fr", "frontimap-igcsante.mssante.fr"),
          "smtp": ("frontsmtp.mssante.fr", "frontsmtp-igcsante.mssante.fr")}
_REFUSALS = ("expired", "unknown_ca", "revoked", "no_client_cert", "timeout")


def _identity(holder: int, pki: str) -> dict[str, Any]:
    idnat = f"8{holder:011d}" if pki != "standard" else f"30B{holder:07d}/CPET{holder % 10000:04d}"
    issuer = {"2ter": _CPS, "fort": _FORT, "standard": _STANDARD}[pki]
    sante = pki != "2ter"
    return {
        "layout": "igc-sante" if sante else "igc-cps", "idnat_ps": idnat, "idnat_struct": "10B0076543",
        "profession": "Médecin", "given_name": "MARIE", "surname": f"MARTIN{holder}",
        **({"organization": "CENTRE HOSPITALIER EXEMPLE"} if sante else {}), "department": "Paris (75)",
        "authority": {"2ter": "igc-cps-2ter", "fort": "igc-sante-fort-pp", "standard": "igc-sante-standard-pp"}[pki],
        "serial": f"{holder * 7919:X}", "sha256": f"{holder:064x}",
        "subject": f"C=FR,ST=Paris (75),O=CENTRE HOSPITALIER EXEMPLE,title=Médecin,GN=MARIE+CN={idnat}+SN=MARTIN",
        "issuer": issuer, "not_before": "2025-01-01T00:00:00+00:00", "not_after": "2028-01-01T00:00:00+00:00",
        "card_type": "2" if pki == "standard" else "0", "card_type_name": "CPE" if pki == "standard" else "CPS",
        "category": "0x00", "is_test_card": "false", "profession_code": "10",
        "card_serial": f"80250000{holder % 100:02d}/{holder:010d}", "upn": f"{idnat}@carte-cps.fr",
    }


def events(count: int, *, days: int = 60, holders: int = 5000, seed: int = 15,
           start: datetime | None = None) -> Iterator[dict[str, Any]]:
    """``count`` events in time order over ``days`` days, from ``holders`` card holders."""
    rnd = random.Random(seed)   # noqa: S311 -- test data, reproducible by seed, nothing secret
    start = start or datetime(2026, 10, 1, tzinfo=UTC)
    # per holder: migration day (beyond the period = never), sends SNI before migrating?, card PKI, address
    plan = []
    for h in range(holders):
        migrate = rnd.random() * days * 1.3
        nosni = rnd.random() < 0.25
        pki = "2ter" if rnd.random() < 0.45 else ("standard" if rnd.random() < 0.08 else "fort")
        card_day = rnd.random() * days * 1.5 if pki == "2ter" else -1.0   # 2TER cards renewed as Fort
        plan.append((migrate, nosni, pki, card_day, f"10.{h // 65536 % 256}.{h // 256 % 256}.{h % 256}"))
    step = days * 86400 / max(count, 1)
    for i in range(count):
        t = i * step
        day = t / 86400
        h = rnd.randrange(holders)
        migrate, nosni, pki, card_day, addr = plan[h]
        if pki == "2ter" and day > card_day:
            pki = "fort"
        listener = "imap" if rnd.random() < 0.7 else "smtp"
        legacy_name, new_name = _NAMES[listener]
        migrated = day >= migrate
        sni: str | None = new_name if migrated else (None if nosni else legacy_name)
        flow = "igcsante" if migrated else "2bis"
        refused = rnd.random() < 0.02
        ev: dict[str, Any] = {
            "conn_id": i + 1, "listener": listener, "peer": f"{addr}:{40000 + i % 20000}", "flow": flow,
            "sni": sni, "reason": rnd.choice(_REFUSALS) if refused else "ok",
            "phase": "handshake" if refused else "relay", "bytes_in": 1200 + i % 5000, "bytes_out": 5400 + i % 9000,
            "duration_ms": 350.5, "tls_version": "TLSv1.3" if rnd.random() < 0.8 else "TLSv1.2",
            "cipher": "TLS_AES_256_GCM_SHA384",
        }
        if refused:
            ev["detail"] = "refused by the synthetic generator"
        else:
            ident = _identity(h, pki)
            ev["authority"] = ident["authority"]
            ev["identity"] = ident
        ev["outcome"] = "refused" if refused else "ok"
        ev["event"] = "connection"
        ev["level"] = "warning" if refused else "info"
        ev["logger_name"] = "sniproxy.connection"
        ev["timestamp"] = (start + timedelta(seconds=t)).isoformat().replace("+00:00", "Z")
        yield ev


def lines(count: int, **kwargs: Any) -> Iterator[str]:
    """The events as JSON lines (no newline), as structlog's JSONRenderer writes them."""
    for ev in events(count, **kwargs):
        yield json.dumps(ev, ensure_ascii=False)
