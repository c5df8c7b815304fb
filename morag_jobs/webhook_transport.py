"""The deliverer's HTTP client: one deadline per attempt, connections only to checked addresses.

httpx's timeouts are per phase and per read, so a receiver that trickles a byte every few
seconds never trips them and holds the attempt (and the row's lease) as long as it likes.
Here every socket operation inside :func:`deadline` gets at most the time left before it,
so an attempt as a whole ends in time. The same network backend resolves the host,
refuses addresses that are not public (:mod:`morag_jobs.webhook_urls`) and connects to
the very address it checked, so a DNS answer that changes between the check and the
connect (rebinding) cannot turn the POST inwards. TLS still verifies, and SNI and the
``Host`` header still name, the URL's host: httpcore passes the host name itself.

Limits, by choice: the DNS lookup is bounded by the resolver's own timeout, not by the
deadline (which is checked straight after it); a TLS handshake gets the time left at its
start for each of its reads. Proxies and ``.netrc`` from the environment are not used: a
proxy resolves names itself, which would void the address check, and ``.netrc``
passwords are not for webhook receivers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import httpcore
import httpx

from morag_jobs.webhook_urls import allowed_addresses

__all__ = ["deadline", "guarded_client"]

T = TypeVar("T")
Timeout = type[httpcore.TimeoutException]

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("webhook_deadline", default=None)
"""(monotonic end, seconds) of the attempt this thread is making, if any."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Within the block, requests of a :func:`guarded_client` end ``seconds`` from now."""
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _within(operation: Callable[[float | None], T], timeout: float | None, late: Timeout) -> T:
    """``operation(t)`` with ``t`` its own timeout cut to what is left of the deadline."""
    bound = _DEADLINE.get()
    if bound is None:
        return operation(timeout)
    end, seconds = bound
    left = end - time.monotonic()
    if left <= 0:
        raise late(f"the attempt's {seconds:g} s deadline passed")
    try:
        return operation(left if timeout is None else min(timeout, left))
    except httpcore.TimeoutException as error:
        if time.monotonic() < end:
            raise
        raise late(f"the attempt's {seconds:g} s deadline passed") from error


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return _within(lambda t: self._stream.read(max_bytes, t), timeout, httpcore.ReadTimeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _within(lambda t: self._stream.write(buffer, t), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = _within(lambda t: self._stream.start_tls(ssl_context, server_hostname, t),
                      timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves once, refuses what the policy refuses, connects to an address it checked."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = allowed_addresses(host, port, allow_private=self.allow_private)
        except OSError as error:  # the name does not resolve: worth retrying later
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
        connect = super().connect_tcp
        failure = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                stream = _within(lambda t, a=address: connect(a, port, t, local_address,
                                                              socket_options),
                                 timeout, httpcore.ConnectTimeout)
            except httpcore.ConnectError as error:  # try the host's next address
                failure = error
            else:
                return _DeadlineStream(stream)
        raise failure


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, *, allow_private: bool) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend, and its transport is a thin shell over this
        # pool (it maps httpcore's errors to httpx's): the pool is rebuilt with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=None,  # the deliverer bounds its concurrency itself
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(allow_private=allow_private),
        )


def guarded_client(*, allow_private: bool, timeout: float) -> httpx.Client:
    """An httpx client that reaches public addresses only (unless ``allow_private``)."""
    transport = _GuardedTransport(allow_private=allow_private)
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)
