"""Clickstream filter-and-enrich: drop bot traffic, add the site section and the referrer's domain.

Run it on the embedded broker, listening so that any Kafka tool can feed it::

    flowbus worker -A examples.pipelines.clickstream:app --data-dir ./flowbus-data --listen 127.0.0.1:9092
    echo '{"user": "u1", "url": "/shop/shoes", "referrer": "https://news.example.com/a", "agent": "Firefox"}' \\
        | kcat -b 127.0.0.1:9092 -P -t clicks
    kcat -b 127.0.0.1:9092 -C -t clicks-enriched
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from flowbus import App

app = App("clickstream")


@dataclass
class Click:
    user: str
    url: str
    referrer: str | None = None
    agent: str = ""


@dataclass
class EnrichedClick:
    user: str
    url: str
    section: str
    referrer_domain: str | None


BOT_MARKERS = ("bot", "crawler", "spider")

clicks = app.topic("clicks", value_type=Click)
enriched = app.topic("clicks-enriched", value_type=EnrichedClick)


def is_human(click: Click) -> bool:
    agent = click.agent.lower()
    return not any(marker in agent for marker in BOT_MARKERS)


def enrich(click: Click) -> EnrichedClick:
    section = click.url.strip("/").split("/", 1)[0] or "home"
    domain = urlsplit(click.referrer).hostname if click.referrer else None
    return EnrichedClick(click.user, click.url, section, domain)


app.stream(clicks).filter(is_human).map(enrich).to(enriched)
