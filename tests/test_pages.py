"""``@app.page`` declarations (flowbus/pages.py) and the web URL a worker's client id carries."""

from __future__ import annotations

from typing import Any

import pytest

from flowbus import App
from flowbus.app_errors import ConfigurationError
from flowbus.pages import member_client_id, web_url_of


async def handler(request: Any) -> dict[str, str]:
    return {}


def test_pages_are_declared_with_their_routing() -> None:
    app = App("pages", broker="memory://")
    counts = app.Table("counts", key_type=str)
    app.page("/hello")(handler)
    app.page("/counts/{word}", name="count", table=counts, key="word")(handler)
    app.page("/orders/{id}", name="order", topic="orders", key="id", method="post")(handler)
    plain, by_table, by_topic = app.pages
    assert (plain.name, plain.method, plain.route_by) == ("handler", "GET", None)
    assert (by_table.route_by, by_table.key) == (counts, "word")
    assert by_topic.route_by is app.topics["orders"] and by_topic.method == "POST"


@pytest.mark.parametrize(("path", "kwargs", "message"), [
    ("hello", {}, "must start with '/'"),
    ("/counts/{word}", {"key": "word"}, "needs both key= and table="),
    ("/counts/{word}", {"topic": "t"}, "needs both key= and table="),
    ("/counts/{word}", {"topic": "t", "key": "id"}, "must name a part of the path"),
])
def test_bad_page_declarations_say_why(path: str, kwargs: dict[str, Any], message: str) -> None:
    app = App("pages", broker="memory://")
    with pytest.raises(ConfigurationError, match=message):
        app.page(path, **kwargs)


def test_two_pages_of_one_name_are_refused() -> None:
    app = App("pages", broker="memory://")
    app.page("/a")(handler)
    with pytest.raises(ConfigurationError, match="exists already"):
        app.page("/b")(handler)


def test_the_web_url_rides_in_the_client_id() -> None:
    client_id = member_client_id("shop-host-42", "http://10.0.0.7:6066")
    assert client_id == "shop-host-42@http://10.0.0.7:6066"
    assert web_url_of(client_id) == "http://10.0.0.7:6066"
    assert member_client_id("shop-host-42", None) == "shop-host-42"
    assert web_url_of("shop-host-42") is None
    assert web_url_of("rdkafka") is None
    assert web_url_of("user@example.com") is None  # not a flowbus worker's
