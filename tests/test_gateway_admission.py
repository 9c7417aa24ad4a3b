"""Connection rate limits, including rates below one per second: the bucket
must be able to hold one whole token, else every handshake is refused."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from scorecast.gateway.admission import ConnectionRateLimiter, TokenBucket
from tests.support import ws_url


def test_a_bucket_below_one_per_second_admits_one_per_interval():
    bucket = TokenBucket(0.2, 0.2, now=0.0)  # one every 5 s
    assert bucket.take(0.0)
    assert not bucket.take(1.0)
    assert 3.5 < bucket.wait() <= 4.0
    assert bucket.take(5.1)
    assert not bucket.take(5.2)


@pytest.mark.parametrize("per_second, per_ip", [(0.5, None), (None, 0.5)])
def test_connection_limits_below_one_per_second(per_second, per_ip):
    limiter = ConnectionRateLimiter(per_second, per_ip)
    assert limiter.admit("10.0.0.1", 100.0) is None
    refusal = limiter.admit("10.0.0.1", 100.5)
    assert refusal is not None and refusal.status == HTTPStatus.TOO_MANY_REQUESTS
    assert refusal.retry_after == 2  # seconds until the next whole token
    assert limiter.admit("10.0.0.1", 102.1) is None


async def test_a_gateway_limited_to_half_a_connection_per_second_admits_the_first(make_gateway):
    gateway = await make_gateway(connections_per_second=0.5)
    async with connect(ws_url(gateway)) as ws:
        assert ws.protocol.state.name == "OPEN"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(gateway)):
            pass
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"] in ("1", "2")
