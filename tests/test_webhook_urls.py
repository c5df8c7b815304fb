"""Which webhook URLs are accepted and which addresses are delivered to (SSRF).

Only absolute http(s) URLs are accepted; deliveries reach public addresses only, unless
the operator allows private ones (``MORAG_WEBHOOK_ALLOW_PRIVATE=1`` or
``allow_private=True``). The receivers are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morag_jobs import settings
from morag_jobs import webhooks as wh
from morag_jobs.errors import MoragJobsError, WebhookURLRefused
from morag_jobs.store import JobStore
from morag_jobs.webhook_urls import allowed_addresses, refusal
from tests.test_webhook_delivery import ended_job, row_of
from tests.test_webhooks import FAST, SECRET, Receiver

LOCAL_ONLY = {key: value for key, value in FAST.items() if key != "allow_private"}
"""Quick retries, and the operator's default: no private addresses."""

NON_PUBLIC = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::1/128",
              "::/128", "fc00::/7", "fe80::/10", "ff00::/8"]

EMBEDDING = [ipaddress.ip_network(net) for net in ("::ffff:0:0/96", "2002::/16", "64:ff9b::/96")]
"""IPv6 ranges that carry an IPv4 address (mapped, 6to4, NAT64): that one decides."""


def public(address: IPv4Address | IPv6Address) -> bool:
    """Globally routable unicast, not reserved, and no IPv4 inside."""
    inside = isinstance(address, IPv6Address) and any(address in net for net in EMBEDDING)
    return address.is_global and not (address.is_multicast or address.is_reserved or inside)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    with JobStore(database_url, create_tables=True) as job_store:
        yield job_store


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().serve()
    yield running
    running.close()


@pytest.fixture(autouse=True)
def operator_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits the machine's MORAG_WEBHOOK_ALLOW_PRIVATE."""
    monkeypatch.delenv("MORAG_WEBHOOK_ALLOW_PRIVATE", raising=False)


class TestSchemes:
    @pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd",
                                     "gopher://127.0.0.1:6379/_FLUSHALL", "javascript:alert(1)",
                                     "example.com/hook", "http:///no-host", "https://"])
    def test_an_endpoint_that_is_not_absolute_http_is_refused(
        self, store: JobStore, url: str
    ) -> None:
        with pytest.raises(WebhookURLRefused, match=r"http or https|no host") as refused:
            wh.register_endpoint(store, "audio", url)
        assert refused.value.url == url
        assert isinstance(refused.value, MoragJobsError) and isinstance(refused.value, ValueError)
        assert wh.list_endpoints(store) == []

    @pytest.mark.parametrize("scheme", ["ftp", "file", "gopher"])
    def test_a_jobs_own_url_of_another_scheme_fails_at_once_unsent(
        self, store: JobStore, scheme: str
    ) -> None:
        job = ended_job(store, f"{scheme}://127.0.0.1/hook")
        assert wh.WebhookDeliverer(store, secret=SECRET, **FAST).deliver_due() == 1
        row = row_of(store, job)
        assert (row.status, row.attempts) == ("failed", 1), row
        assert row.last_error == f"refused: the scheme must be http or https, not {scheme!r}"

    @given(st.from_regex(r"\A[a-zA-Z][a-zA-Z0-9+.\-]{0,12}\Z"))
    def test_no_scheme_but_http_and_https_is_accepted(self, scheme: str) -> None:
        url = f"{scheme}://example.com/hook"
        if scheme.lower() in ("http", "https"):
            assert wh.check_url(url) == url
        else:
            with pytest.raises(WebhookURLRefused):
                wh.check_url(url)

    @given(st.sampled_from(["http", "https", "HTTP"]),
           st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,2}\Z"),
           st.one_of(st.none(), st.integers(1, 65535)), st.from_regex(r"\A(/[a-z0-9_]*)*\Z"))
    def test_absolute_http_urls_are_accepted(
        self, scheme: str, host: str, port: int | None, path: str
    ) -> None:
        url = f"{scheme}://{host}{f':{port}' if port else ''}{path}"
        assert wh.check_url(url) == url


class TestAddresses:
    def test_loopback_is_refused_by_default_and_never_contacted(
        self, store: JobStore, receiver: Receiver
    ) -> None:
        job = ended_job(store, receiver.url)
        assert wh.WebhookDeliverer(store, secret=SECRET, **LOCAL_ONLY).deliver_due() == 1
        row = row_of(store, job)
        assert (row.status, row.attempts) == ("failed", 1), "refused, and not retried"
        assert row.last_error == ("refused: 127.0.0.1 is a loopback address; set "
                                  "MORAG_WEBHOOK_ALLOW_PRIVATE=1 to deliver to private addresses")
        assert receiver.requests == []

    @pytest.mark.parametrize(("url", "kind"), [
        ("http://[::1]:9/hook", "loopback"), ("http://0.0.0.0:9/hook", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.1.2.3/hook", "private"), ("http://[::ffff:127.0.0.1]:9/", "loopback"),
        ("http://224.0.0.1/hook", "multicast"), ("http://100.64.0.1/hook", "non-public"),
    ])
    def test_non_public_addresses_are_refused_before_connecting(
        self, store: JobStore, url: str, kind: str
    ) -> None:
        job = ended_job(store, url)
        wh.WebhookDeliverer(store, secret=SECRET, **LOCAL_ONLY).deliver_due()
        row = row_of(store, job)
        assert (row.status, row.attempts) == ("failed", 1), row
        assert row.last_error is not None and f"is a {kind} address" in row.last_error, row

    def test_a_name_that_resolves_to_loopback_is_refused(
        self, store: JobStore, receiver: Receiver
    ) -> None:
        job = ended_job(store, receiver.url.replace("127.0.0.1", "localhost"))
        wh.WebhookDeliverer(store, secret=SECRET, **LOCAL_ONLY).deliver_due()
        row = row_of(store, job)
        assert row.status == "failed" and row.last_error is not None
        assert row.last_error.startswith("refused: localhost ("), row.last_error
        assert "is a loopback address" in row.last_error
        assert receiver.requests == []

    def test_the_operator_setting_allows_private_addresses(
        self, store: JobStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_WEBHOOK_ALLOW_PRIVATE", "1")
        job = ended_job(store, receiver.url.replace("127.0.0.1", "localhost"))
        assert wh.WebhookDeliverer(store, secret=SECRET, **LOCAL_ONLY).deliver_due() == 1
        assert row_of(store, job).status == "delivered"
        assert len(receiver.requests) == 1

    def test_the_constructor_argument_overrides_the_setting(
        self, store: JobStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_WEBHOOK_ALLOW_PRIVATE", "1")
        job = ended_job(store, receiver.url)
        wh.WebhookDeliverer(store, secret=SECRET, allow_private=False, **LOCAL_ONLY).deliver_due()
        assert row_of(store, job).status == "failed"
        assert receiver.requests == []

    @given(st.sampled_from(NON_PUBLIC).flatmap(lambda net: st.ip_addresses(network=net)))
    def test_every_non_public_address_is_refused(
        self, address: IPv4Address | IPv6Address
    ) -> None:
        assert refusal(address) is not None, f"{address} would be delivered to"

    @given(st.sampled_from(["10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16"])
           .flatmap(lambda net: st.ip_addresses(network=net)))
    def test_ipv4_hidden_in_ipv6_is_refused_like_the_ipv4(self, inner: IPv4Address) -> None:
        for outer in (f"::ffff:{inner}", f"64:ff9b::{inner}"):
            assert refusal(ipaddress.ip_address(outer)) == refusal(inner), outer

    @given(st.ip_addresses().filter(public))
    def test_public_addresses_are_allowed(self, address: IPv4Address | IPv6Address) -> None:
        assert refusal(address) is None, f"{address} is public"

    def test_a_host_with_one_private_answer_is_refused_whatever_else_it_has(self) -> None:
        with pytest.raises(WebhookURLRefused, match="is a loopback address"):
            allowed_addresses("localhost", 80, allow_private=False)
        assert "127.0.0.1" in allowed_addresses("localhost", 80, allow_private=True)


class TestSettings:
    @pytest.mark.parametrize(("raw", "allowed"), [("1", True), ("true", True), ("yes", True),
                                                  ("0", False), ("", False), ("off", False)])
    def test_allow_private_reads_yes_and_no(
        self, monkeypatch: pytest.MonkeyPatch, raw: str, allowed: bool
    ) -> None:
        monkeypatch.setenv("MORAG_WEBHOOK_ALLOW_PRIVATE", raw)
        assert settings.webhook_allow_private() is allowed

    def test_bad_values_are_refused_naming_the_variable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_WEBHOOK_ALLOW_PRIVATE", "maybe")
        with pytest.raises(ValueError, match="MORAG_WEBHOOK_ALLOW_PRIVATE='maybe'"):
            settings.webhook_allow_private()
        for name, raw in [("MORAG_WEBHOOK_TIMEOUT", "0"), ("MORAG_WEBHOOK_TIMEOUT", "nan"),
                          ("MORAG_WEBHOOK_TIMEOUT", "inf"), ("MORAG_WEBHOOK_CONCURRENCY", "2.5"),
                          ("MORAG_WEBHOOK_CONCURRENCY", "-1")]:
            monkeypatch.setenv(name, raw)
            with pytest.raises(ValueError, match=f"{name}='{raw}' is not a positive"):
                settings.webhook_timeout() if "TIMEOUT" in name else settings.webhook_concurrency()
            monkeypatch.delenv(name)

    def test_the_deliverer_takes_its_deadline_and_concurrency_from_the_environment(
        self, store: JobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MORAG_WEBHOOK_TIMEOUT", "2.5")
        monkeypatch.setenv("MORAG_WEBHOOK_CONCURRENCY", "3")
        deliverer = wh.WebhookDeliverer(store, secret=SECRET)
        assert (deliverer.timeout, deliverer.concurrency, deliverer.allow_private) == (
            2.5, 3, False)
        monkeypatch.delenv("MORAG_WEBHOOK_TIMEOUT")
        monkeypatch.delenv("MORAG_WEBHOOK_CONCURRENCY")
        deliverer = wh.WebhookDeliverer(store, secret=SECRET)
        assert (deliverer.timeout, deliverer.concurrency) == (10.0, 8)
