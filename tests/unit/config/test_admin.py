"""sniproxy.config.load, `admin` section: the admin endpoint's address, errors at file:line:key."""

from __future__ import annotations

from sniproxy.config.load import load
from sniproxy.config.model import Address
from tests.unit.config.test_config import (
    BASE,
    Work,
    assert_error,
    line_of,
    pki,  # noqa: F401 - a fixture, shared with test_config
    work,  # noqa: F401 - a fixture, shared with test_config
)

STATE_LINE = "state_dir: state\n"


def test_admin_absent_means_no_endpoint(work: Work) -> None:
    assert load(work.write(BASE)).config.admin is None


def test_admin_bind_is_read(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + 'admin: {bind: "127.0.0.1:9100"}\n'})
    admin = load(path).config.admin
    assert admin is not None and admin.bind == Address("127.0.0.1", 9100)


def test_admin_ipv6_bind(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + "admin:\n  bind: \"[::1]:9100\"\n"})
    admin = load(path).config.admin
    assert admin is not None and admin.bind == Address("::1", 9100)
    assert admin.line == line_of(work.text, "[::1]:9100")      # a bind failure at start names it


def test_admin_bad_address_names_its_line(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + "admin:\n  bind: \"127.0.0.1:99999\"\n"})
    assert_error(path, "admin.bind", line_of(work.text, "99999"), "out of range")


def test_admin_missing_bind(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + "admin: {}\n"})
    assert_error(path, "admin", line_of(work.text, "admin:"), "missing required key 'bind'")


def test_admin_unknown_key(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + "admin:\n  bind: 127.0.0.1:9100\n  port: 9\n"})
    assert_error(path, "admin.port", line_of(work.text, "port: 9"), "bind")


def test_admin_on_a_client_port_is_refused(work: Work) -> None:
    # The smtp listener binds 127.0.0.1:10587; the wildcard also overlaps it.
    for bind in ("127.0.0.1:10587", "0.0.0.0:10587"):
        path = work.write(BASE, {STATE_LINE: STATE_LINE + f"admin:\n  bind: \"{bind}\"\n"})
        err = assert_error(path, "admin.bind", line_of(work.text, bind), "client port")
        assert f"line {line_of(work.text, 'bind: 127.0.0.1:10587')}" in err.message


def test_admin_not_a_mapping(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + "admin: 127.0.0.1:9100\n"})
    assert_error(path, "admin", line_of(work.text, "admin:"), "")
