"""Topics as the app sees them: a name, a partition count and codecs for keys and values."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowbus.app_errors import ConfigurationError
from flowbus.log.catalog import validate_topic_name
from flowbus.log.errors import InvalidTopicError
from flowbus.serializers import Codec, Serializer
from flowbus.transports.base import Headers, RecordMetadata, TopicSpec

if TYPE_CHECKING:
    from flowbus.app import App


def _headers(headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes]] | None) -> Headers:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in items)


class Topic:
    """A declared topic; made by :meth:`flowbus.App.topic`, never directly.

    Keys default to the ``raw`` serializer when ``key_type`` is ``bytes`` or ``str`` and to
    ``json`` otherwise; values default to ``json``.
    """

    def __init__(
        self,
        app: App,
        name: str,
        *,
        key_type: Any = None,
        value_type: Any = None,
        partitions: int | None = None,
        key_serializer: str | Serializer | None = None,
        value_serializer: str | Serializer = "json",
        config: Mapping[str, str] | None = None,
        internal: bool = False,
    ) -> None:
        try:
            validate_topic_name(name)
        except InvalidTopicError as exc:
            # Here, at the declaration, rather than as the broker's refusal when the worker starts.
            raise ConfigurationError(f"{exc} (Kafka's rule for topic names)") from None
        self.app = app
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.partitions = partitions
        self.config = dict(config or {})
        self.internal = internal
        if key_serializer is None:
            key_serializer = "raw" if key_type in (bytes, str) else "json"
        self.key_codec = Codec(key_serializer, key_type)
        self.value_codec = Codec(value_serializer, value_type)

    def __repr__(self) -> str:
        return f"<Topic {self.name!r}>"

    def spec(self, default_partitions: int) -> TopicSpec:
        """How to create this topic if it does not exist."""
        return TopicSpec(self.name, self.partitions or default_partitions, config=self.config)

    def send_soon(
        self,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Encode and enqueue one record without waiting; delivery is checked at the next commit."""
        self.app.producer.send_soon(
            self.name,
            self.value_codec.encode(value),
            self.key_codec.encode(key),
            partition=partition,
            headers=_headers(headers),
            timestamp_ms=timestamp_ms,
        )

    async def send(
        self,
        value: Any = None,
        *,
        key: Any = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | Sequence[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Encode and enqueue one record; returns its delivery future (await it to wait for delivery).

        Inside a running worker the record goes through the worker's producer, so with
        ``exactly_once`` it belongs to the current transaction. Outside a worker the app starts
        a plain producer on first use (``await app.stop()`` flushes it).
        """
        await self.app.ensure_producer()
        return self.app.producer.send(
            self.name,
            self.value_codec.encode(value),
            self.key_codec.encode(key),
            partition=partition,
            headers=_headers(headers),
            timestamp_ms=timestamp_ms,
        )
