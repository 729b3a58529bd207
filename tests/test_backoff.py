"""Retry decisions, table-driven: the delivery backoff and the Graph API error classifier."""

from __future__ import annotations

import pytest

from crm.replies.delivery import backoff
from integrations.whatsapp.client import RETRYABLE_CODES, classify_error

DRAWS = 400


def draws(attempt: int, **kwargs) -> list[float]:
    return [backoff(attempt, **kwargs).total_seconds() for _ in range(DRAWS)]


@pytest.mark.parametrize("attempt, kwargs, step", [
    pytest.param(1, {}, 2.0, id="the first retry waits 1 to 2 s"),
    pytest.param(2, {}, 4.0, id="the second retry waits 2 to 4 s"),
    pytest.param(3, {}, 8.0, id="the third retry waits 4 to 8 s"),
    pytest.param(6, {}, 64.0, id="the sixth retry waits 32 to 64 s"),
    pytest.param(7, {}, 120.0, id="the seventh retry is capped at 120 s"),
    pytest.param(40, {}, 120.0, id="the fortieth retry stays at the cap"),
    pytest.param(5000, {}, 120.0, id="an attempt count far past any float stays at the cap"),
    pytest.param(1, {"base": 1.0}, 1.0, id="a base of 1 s starts at half a second to 1 s"),
    pytest.param(4, {"base": 1.0}, 8.0, id="a base of 1 s doubles the same way"),
    pytest.param(4, {"base": 1.0, "cap": 5.0}, 5.0, id="a lower cap is respected"),
    pytest.param(3, {"base": 0.5, "cap": 1000.0}, 2.0, id="a fractional base doubles too"),
])
def test_backoff_is_half_to_all_of_the_capped_step(attempt, kwargs, step):
    seconds = draws(attempt, **kwargs)
    assert min(seconds) >= step * 0.5
    assert max(seconds) <= step
    # jitter: the draws spread over the range (400 uniform draws miss half of it with odds of 2^-400)
    assert max(seconds) - min(seconds) > step * 0.25


def test_backoff_grows_until_the_cap():
    floors = [min(draws(n)) for n in range(1, 10)]
    ceilings = [max(draws(n)) for n in range(1, 10)]
    assert all(ceilings[i] <= floors[i + 1] * 2 for i in range(8))
    assert max(ceilings) <= 120.0


BODY = {"error": {"message": "(#131026) Message undeliverable", "type": "OAuthException", "code": 131026,
                  "error_data": {"messaging_product": "whatsapp", "details": "Recipient is not on WhatsApp"},
                  "error_subcode": 2494010, "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}


def graph_error(code, message="Something", **extra) -> dict:
    return {"error": {"message": message, "type": "OAuthException", "code": code, **extra}}


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES))
@pytest.mark.parametrize("status", [400, 403])
def test_every_throttling_code_is_retryable_whatever_the_status(code, status):
    result = classify_error(status, graph_error(code))
    assert result.retryable is True and result.error_code == code


@pytest.mark.parametrize("status, body, retryable", [
    pytest.param(400, graph_error(130429, "Rate limit hit"), True, id="130429 throughput reached is retried"),
    pytest.param(400, graph_error(131056, "Pair rate limit hit"), True, id="131056 pair rate limit is retried"),
    pytest.param(400, graph_error(80007, "Rate limit issues"), True, id="80007 account rate limit is retried"),
    pytest.param(400, graph_error(4, "Too many calls"), True, id="4 app rate limit is retried"),
    pytest.param(400, graph_error(131048, "Spam rate limit hit"), True, id="131048 spam rate limit is retried"),
    pytest.param(400, graph_error(133016, "Registration rate limit"), True, id="133016 register limit is retried"),
    pytest.param(400, graph_error("131056"), True, id="a code sent as a string still counts"),
    pytest.param(400, BODY, False, id="131026 undeliverable is permanent"),
    pytest.param(400, graph_error(131047, "Re-engagement message"), False, id="131047 window closed is permanent"),
    pytest.param(400, graph_error(100, "Invalid parameter"), False, id="100 invalid parameter is permanent"),
    pytest.param(401, graph_error(190, "Access token has expired"), False, id="190 expired token is permanent"),
    pytest.param(403, graph_error(10, "Permission denied"), False, id="10 permission denied is permanent"),
    pytest.param(400, graph_error(132001, "Template does not exist"), False, id="132001 missing template is permanent"),
    pytest.param(404, None, False, id="a 404 without a body is permanent"),
    pytest.param(400, {}, False, id="a 400 with an empty body is permanent"),
    pytest.param(429, None, True, id="a 429 without a body is retried"),
    pytest.param(429, graph_error(131026), True, id="a 429 is retried whatever its code"),
    pytest.param(500, None, True, id="a 500 without a body is retried"),
    pytest.param(502, {"error": {}}, True, id="a 502 with an empty error is retried"),
    pytest.param(503, graph_error(131000, "Something went wrong"), True, id="a 503 is retried"),
    pytest.param(504, None, True, id="a 504 is retried"),
    pytest.param(500, graph_error(131026), True, id="a 500 is retried whatever its code"),
    pytest.param(400, graph_error("abc"), False, id="a code that is not a number is no code"),
    pytest.param(400, {"error": "boom"}, False, id="an error that is a string is permanent"),
    pytest.param(400, ["error"], False, id="a body that is a list is permanent"),
    pytest.param(400, "Bad Request", False, id="a body that is a string is permanent"),
    pytest.param(400, {"error": {"code": 100, "error_data": "oops"}}, False, id="error data that is a string"),
    pytest.param(400, {"error": {"code": 100, "title": 42}}, False, id="a title that is a number"),
    pytest.param(503, {"error": "boom"}, True, id="a 503 with a garbled body is still retried"),
])
def test_classify_error(status, body, retryable):
    result = classify_error(status, body)
    assert result.ok is False and result.http_status == status
    assert result.retryable is retryable
    assert result.outcome_unknown is False  # an HTTP answer came back: Meta's verdict is known
    assert isinstance(result.error_title, str) and result.error_title


@pytest.mark.parametrize("status, body, code, title, details", [
    pytest.param(400, BODY, 131026, "(#131026) Message undeliverable", "Recipient is not on WhatsApp",
                 id="details come from error data and the title from the message"),
    pytest.param(400, graph_error(131047, "Re-engagement message", title="Re-engagement message",
                                  error_data={"details": "More than 24 hours have passed"}),
                 131047, "Re-engagement message", "More than 24 hours have passed",
                 id="a title given by Meta is used"),
    pytest.param(400, graph_error(100, "Invalid parameter"), 100, "Invalid parameter", "Invalid parameter",
                 id="without error data the message is the details"),
    pytest.param(500, None, None, "HTTP 500", None, id="without a body the status is the title"),
    pytest.param(429, {"error": {}}, None, "HTTP 429", None, id="an empty error names the status"),
    pytest.param(400, graph_error(None, "x" * 2000), None, "x" * 512, "x" * 2000,
                 id="a long title is cut to 512 characters"),
    pytest.param(400, {"error": "boom"}, None, "HTTP 400", None, id="a garbled error names the status"),
])
def test_error_code_title_and_details(status, body, code, title, details):
    result = classify_error(status, body)
    assert (result.error_code, result.error_title, result.error_details) == (code, title, details)
