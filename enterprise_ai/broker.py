"""The Celery broker transport for Redis: kombu's, surviving a Redis restart mid-task.

When the broker connection drops while a task is running (acks late: a reply being
generated), kombu releases the connection and, closing its channel, puts the unacknowledged
task back. With Redis still down, that step fails with an AttributeError instead of a
connection error (the channel's connection is already gone), which Celery treats as
unrecoverable: the worker exits, and the ack of the running task crashes it again later.

Here a restore or an ack that cannot reach Redis is logged and skipped. Nothing is lost: the
task stays in kombu's unacked index, from which a consumer restores it after the visibility
timeout; by then its reply has finished or has been swept as interrupted, so the redelivered
task does nothing (conversations.services.reply_claim).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)

# What a closed channel or an unreachable Redis raises in kombu's Redis transport.
_UNREACHABLE = (AttributeError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except _UNREACHABLE as exc:
            delivered: dict[Any, Any] = self._delivered or {}
            logger.warning(
                "broker unreachable: %d unacknowledged task(s) left for redelivery (%s)",
                len(delivered),
                type(exc).__name__,
            )
            delivered.clear()

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except _UNREACHABLE as exc:
            logger.warning("task ack lost with the broker connection (%s)", type(exc).__name__)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except _UNREACHABLE as exc:
            logger.warning("task reject lost with the broker connection (%s)", type(exc).__name__)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
