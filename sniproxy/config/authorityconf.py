"""The ``authorities`` section: sets of card CA certificates and how each checks revocation.

Owns: the schema of an authority set (``roots``, ``intermediates``, ``test``, ``enabled``, ``crl``),
the CRL source spellings allowed, and the inference of ``test`` from the CA names. Called by
``load``; must not build trust stores or fetch CRLs.
"""

from __future__ import annotations

from sniproxy.config.fields import MISSING, Report, Section
from sniproxy.config.model import AuthoritySet
from sniproxy.config.pemfiles import Files, distribution_points, looks_test
from sniproxy.config.yamlloc import LocDict

AUTHORITY_KEYS = ("roots", "intermediates", "test", "enabled", "crl")
CRL_SET_KEYS = ("sources", "from_certificates", "check", "stale")
CRL_CHECKS = ("chain", "leaf")
CRL_SCHEMES = ("http", "https", "ldap", "ldaps")


class AuthorityReader:
    """Reads ``authorities``; the flows read after it look the sets up by name."""

    def __init__(self, report: Report, files: Files | None) -> None:
        self.r = report
        self.files = files
        self.names: set[str] = set()     # every name written, even when broken
        self.authorities: dict[str, AuthoritySet] = {}

    def read(self, top: Section) -> None:
        """Every set of ``authorities``; the names even of broken ones (a flow may name them)."""
        sec = top.section("authorities")
        if sec is None:
            return
        for name, asec in sec.named_objects("authority set"):
            self.names.add(name)
            if asec is not None:
                aset = self._authority(name, asec)
                if aset is not None:
                    self.authorities[name] = aset

    def _authority(self, name: str, sec: Section) -> AuthoritySet | None:
        before = len(self.r.errors)
        sec.check_keys(AUTHORITY_KEYS)
        roots = sec.strings("roots", required=True) or []
        if "roots" in sec.data and not roots and len(self.r.errors) == before:
            sec.error("roots", "at least one root certificate file is required")
        inters = sec.strings("intermediates") or []
        declared_test = sec.boolean("test")
        enabled = sec.boolean("enabled", True)
        crls, from_certs, check, grace = self._crl(sec)
        inferred: bool | None = None
        if self.files is not None and enabled is True:  # a disabled set is not used: files not needed
            subjects = []
            for value, line, key in roots + inters:
                subjects += self.files.ca_certs(sec.resolve(value), line, key) or []
            inferred = any(looks_test(c) for c in subjects) if subjects else None
            if from_certs:
                found = [u for u in distribution_points(subjects) if u not in crls]
                if not found:
                    sec.warn("crl", "from_certificates: the CA certificates name no CRL distribution point")
                crls += found
        if declared_test is MISSING:
            test = bool(inferred)
        else:
            test = declared_test
            if inferred is not None and inferred != test:
                sec.warn("test", f"declared test: {str(test).lower()} but the CA names "
                                 f"{'say' if inferred else 'do not say'} TEST")
        if len(self.r.errors) > before or enabled is MISSING:
            return None
        return AuthoritySet(
            name=name, roots=tuple(sec.resolve(v) for v, _, _ in roots),
            intermediates=tuple(sec.resolve(v) for v, _, _ in inters), test=test, enabled=enabled,
            crl_sources=tuple(crls), crl_check=check, crl_grace=grace, crl_from_certificates=from_certs,
        )

    def _crl(self, sec: Section) -> tuple[list[str], bool, str, float | None]:
        """The ``crl`` key of an authority set: a list of sources, or a mapping with options."""
        raw = sec.raw("crl")
        if raw is MISSING or raw is None or not isinstance(raw, LocDict):
            items = sec.strings("crl") or []
            return [c for v, ln, k in items if (c := self._crl_source(sec, v, ln, k)) is not None], False, \
                "chain", None
        csec = Section.of(self.r, raw, sec.key("crl"), sec.line("crl"), sec.base_dir)
        assert csec is not None
        csec.check_keys(CRL_SET_KEYS)
        items = csec.strings("sources") or []
        sources = [c for v, ln, k in items if (c := self._crl_source(csec, v, ln, k)) is not None]
        from_certs = csec.boolean("from_certificates", False)
        check = csec.choice("check", CRL_CHECKS, "chain")
        grace: float | None = None
        stale = csec.raw("stale")
        if isinstance(stale, LocDict):
            ssec = Section.of(self.r, stale, csec.key("stale"), csec.line("stale"), csec.base_dir)
            assert ssec is not None
            ssec.check_keys(("grace",))
            if "grace" not in ssec.data:
                ssec.error(None, "expected `fail-closed` or `{grace: DURATION}`")
            else:
                grace = ssec.duration("grace", 0.0)
        elif stale is not MISSING and stale != "fail-closed":
            csec.error("stale", f"expected `fail-closed` or `{{grace: DURATION}}`, got {stale!r}")
        if not sources and from_certs is not True:
            csec.error("sources", "no CRL source: list `sources` or set `from_certificates: true`")
        return sources, from_certs is True, check, grace

    def _crl_source(self, sec: Section, value: str, line: int, key: str) -> str | None:
        scheme, sep, _ = value.partition("://")
        if sep:
            if scheme.lower() not in CRL_SCHEMES:
                self.r.error(line, key, f"unsupported CRL source scheme {scheme!r} "
                                        f"(allowed: {', '.join(CRL_SCHEMES)}, or a file path)")
                return None
            return value
        return str(sec.resolve(value))
