"""RouteTable: SNI -> flow selection of one listener (pure, no sockets)."""

from __future__ import annotations

import pytest

from sniproxy.config.model import Address, Backend, Listener, Protocol, Route, UnknownSni
from sniproxy.routing import RouteTable


def _listener(routes: dict[str, tuple[str, ...]], *, default: str | None = "2bis",
              unknown: UnknownSni = UnknownSni.DEFAULT) -> Listener:
    return Listener(
        name="imap",
        binds=(Address("127.0.0.1", 1143),),
        protocol=Protocol.IMAP,
        backend=Backend(Address("127.0.0.1", 10143)),
        routes=tuple(Route(flow, names) for flow, names in routes.items()),
        default_flow=default,
        unknown_sni=unknown,
    )


ROUTES = {
    "2bis": ("frontimap.mssante.fr",),
    "igcsante": ("frontimap-igcsante.mssante.fr", "*.example.org"),
    "exact": ("special.example.org",),
}


@pytest.fixture
def table() -> RouteTable:
    return RouteTable.from_listener(_listener(ROUTES, default="default"))


@pytest.fixture
def reject_table() -> RouteTable:
    return RouteTable.from_listener(_listener(ROUTES, default="default", unknown=UnknownSni.REJECT))


def test_from_listener_splits_exact_and_wildcards() -> None:
    t = RouteTable.from_listener(_listener(ROUTES, default="2bis"))
    assert t.exact == {
        "frontimap.mssante.fr": "2bis",
        "frontimap-igcsante.mssante.fr": "igcsante",
        "special.example.org": "exact",
    }
    assert t.wildcards == {"example.org": "igcsante"}
    assert t.default == "2bis"
    assert t.reject_unknown is False
    assert RouteTable.from_listener(_listener(ROUTES, unknown=UnknownSni.REJECT)).reject_unknown is True


@pytest.mark.parametrize(("sni", "flow"), [
    ("frontimap.mssante.fr", "2bis"),
    ("frontimap-igcsante.mssante.fr", "igcsante"),
    ("special.example.org", "exact"),
])
def test_exact_match(table: RouteTable, sni: str, flow: str) -> None:
    assert table.choose(sni) == flow


@pytest.mark.parametrize("sni", [
    "FRONTIMAP.MSSANTE.FR",
    "FrontImap.MssAnte.Fr",
    "frontimap.mssante.fr.",
    "FRONTIMAP.mssante.fr.",
])
def test_case_insensitive_and_trailing_dot(table: RouteTable, sni: str) -> None:
    assert table.choose(sni) == "2bis"


def test_wildcard_case_and_trailing_dot(table: RouteTable) -> None:
    assert table.choose("A.Example.ORG.") == "igcsante"


def test_wildcard_matches_one_label(table: RouteTable) -> None:
    assert table.choose("a.example.org") == "igcsante"
    assert table.choose("mail-1.example.org") == "igcsante"


@pytest.mark.parametrize("sni", ["a.b.example.org", "example.org", "org", "aexample.org", "a.example.org.x"])
def test_wildcard_does_not_reach_further(table: RouteTable, reject_table: RouteTable, sni: str) -> None:
    assert table.choose(sni) == "default"
    assert reject_table.choose(sni) is None


def test_exact_beats_wildcard(table: RouteTable) -> None:
    assert table.choose("special.example.org") == "exact"
    assert table.choose("SPECIAL.example.org.") == "exact"
    assert table.choose("other.example.org") == "igcsante"


def test_exact_beats_wildcard_whatever_the_route_order() -> None:
    routes = {"wild": ("*.example.org",), "exact": ("a.example.org",)}
    t = RouteTable.from_listener(_listener(routes, default="d"))
    assert t.choose("a.example.org") == "exact"
    assert t.choose("b.example.org") == "wild"


def test_no_sni_gets_default(table: RouteTable) -> None:
    assert table.choose(None) == "default"


def test_no_sni_gets_default_even_with_reject(reject_table: RouteTable) -> None:
    assert reject_table.choose(None) == "default"


def test_no_sni_refused_with_reject_and_no_default() -> None:
    t = RouteTable.from_listener(_listener(ROUTES, default=None, unknown=UnknownSni.REJECT))
    assert t.choose(None) is None
    assert t.choose("unknown.mssante.fr") is None
    assert t.choose("frontimap.mssante.fr") == "2bis"


def test_unknown_sni_gets_default(table: RouteTable) -> None:
    assert table.choose("unknown.mssante.fr") == "default"
    assert table.choose("") == "default"


def test_unknown_sni_rejected(reject_table: RouteTable) -> None:
    assert reject_table.choose("unknown.mssante.fr") is None
    assert reject_table.choose("frontimap.mssante.fr.evil") is None
    # known names still route under reject
    assert reject_table.choose("frontimap.mssante.fr") == "2bis"
    assert reject_table.choose("x.example.org") == "igcsante"


def test_single_flow_listener_routes_everything_to_it() -> None:
    t = RouteTable.from_listener(_listener({}, default="only"))
    assert t.exact == {}
    assert t.wildcards == {}
    assert t.choose(None) == "only"
    assert t.choose("anything.example") == "only"


def test_a_route_table_is_frozen(table: RouteTable) -> None:
    # shared by every connection of a listener: nothing may change it in place (issue 11, mutation testing)
    with pytest.raises(AttributeError):
        table.default = "other"  # type: ignore[misc]
