"""Stateful: page views per user (a table updated by an agent) and per page (a dataflow count).

The clicks of ``clicks`` are re-keyed by user through ``group_by``, so each user's count lives on
the partition (and worker) that processes that user; the per-page count is Kafka Streams style.
Both tables are changelogged, so a restarted worker carries on from where it was::

    flowbus worker -A examples.pipelines.pageviews:app --data-dir ./flowbus-data --listen 127.0.0.1:9092
    flowbus tables get -A examples.pipelines.pageviews:app views-per-user u1
"""

from __future__ import annotations

from typing import Any

from flowbus import App

app = App("pageviews", processing_guarantee="exactly_once")

clicks = app.topic("clicks")
user_views = app.topic("user-views", key_type=str)
page_views = app.topic("page-views", key_type=str)

views_per_user = app.Table("views-per-user", default=int, key_type=str, value_type=int)


@app.agent(clicks, group_by=lambda click: click["user"])
async def count_user_views(stream):  # type: ignore[no-untyped-def]
    """Count each user's views and say when a user passes every tenth one."""
    async for user, click in stream.items():
        views_per_user[user] += 1
        if views_per_user[user] % 10 == 0:
            await user_views.send({"user": user, "views": views_per_user[user]}, key=user)


def page_of(click: dict[str, Any]) -> str:
    return "/" + click["url"].strip("/").split("/", 1)[0]


app.stream(clicks).group_by(page_of, name="by-page").count(name="views-per-page").to(page_views)
