"""The worker node's MQTT listener: mirrors retained constraint topics into Redis.

One connection per worker node (in the worker's main process); every process of the
node (prefork children included) then picks changes up from the shared ConstraintStore.

- On connect it subscribes to ``<prefix>/constraints/+`` (QoS 1) and receives the
  retained state; a message it publishes to its own marker topic comes back after the
  retained burst, which marks the moment the worker knows the current state.
- The session is persistent (``clean_session=False``, a stable client id), so changes
  published while the node was offline, removals included, arrive on reconnect.
- On a fresh session, constraints stored but absent from the retained burst were
  removed while nobody listened: they are removed too — unless the burst was empty,
  which more likely means a broker that lost its retained state: then the last known
  constraints stay in force and a warning says so.
- Redis restarted without persistence comes back empty: the listener notices (the
  version counter is gone) and stores the retained constraints it knows again, in one
  transaction. Its later writes require the counter (store/change_constraint.lua), so a
  write retried into the restarted server writes nothing there and cannot hide the loss.
- paho reconnects by itself with backoff. An exception inside a paho callback would
  kill paho's network thread silently, so every callback catches everything.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import redis

from cascade_celery.config import MqttSettings
from cascade_celery.constraints.model import Constraint
from cascade_celery.constraints.registry import HandlerRegistry
from cascade_celery.errors import InvalidConstraint
from cascade_celery.mqtt import protocol
from cascade_celery.mqtt.client import make_client
from cascade_celery.store import ConstraintStore, HistoryLost

logger = logging.getLogger(__name__)


class ConstraintListener:
    """Keep a ConstraintStore equal to the retained constraints of one MQTT prefix."""

    def __init__(
        self,
        settings: MqttSettings,
        prefix: str,
        store: ConstraintStore,
        handlers: HandlerRegistry,
        client_id: str,
    ) -> None:
        self.settings, self.prefix, self.store = settings, prefix, store
        #: Validates each payload once, with the installation's handlers (a type this
        #: worker lacks is rejected here); the store then trusts it.
        self._validate = handlers.validate
        self._signer = settings.signer()
        #: When the last accepted signed payload of each id was signed.
        self._last_signed: dict[str, float] = {}
        self._client = make_client(settings, client_id, clean_session=False)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._marker_topic = f"{prefix}/_sync/{client_id}"
        self._marker = ""
        self._burst: set[str] | None = None
        self._fresh_session = False
        self._pending: dict[str, protocol.Change] = {}
        #: The retained state as last received: what Redis must hold.
        self._known: dict[str, Constraint] = {}
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        #: This listener has stored a change: Redis had a history it can lose since.
        self._stored = False
        self._stop = threading.Event()
        self._retry_thread: threading.Thread | None = None
        #: Set once the retained state has been received since the last (re)connect.
        self.synced = threading.Event()

    def start(self, timeout: float) -> bool:
        """Connect in the background; return whether the retained state arrived in time."""
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()
        self._retry_thread = threading.Thread(
            target=self._retry_pending, name="cascade-mqtt-retry", daemon=True
        )
        self._retry_thread.start()
        return self.synced.wait(timeout)

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks: each catches everything ------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                logger.error("cascade: MQTT %s refused the connection: %s",
                             self.settings.redacted_url(), reason)  # fmt: skip
                return
            logger.info("cascade: connected to MQTT %s", self.settings.redacted_url())
            with self._lock:
                self._fresh_session = not flags.session_present
                self._burst = set()
                self._marker = uuid.uuid4().hex
            client.subscribe([(protocol.subscription(self.prefix), 1), (self._marker_topic, 1)])
        except Exception:
            logger.exception("cascade: MQTT on_connect failed")

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        try:
            if any(code.is_failure for code in codes):
                logger.error("cascade: MQTT subscription refused: %s", codes)
                return
            client.publish(self._marker_topic, self._marker, qos=1)
        except Exception:
            logger.exception("cascade: MQTT on_subscribe failed")

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        try:
            if not self._stop.is_set():
                logger.warning("cascade: MQTT disconnected (%s); constraints stay in force, "
                               "reconnecting", reason)  # fmt: skip
        except Exception:  # pragma: no cover - logging failed
            return

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            if message.topic == self._marker_topic:
                if message.payload.decode(errors="replace") == self._marker:
                    self._end_of_burst()
                return
            self._receive(message.topic, bytes(message.payload), retained=bool(message.retain))
        except Exception:
            logger.exception("cascade: MQTT message on %s could not be handled", message.topic)

    # -- applying changes -------------------------------------------------------------------

    def _receive(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        try:
            constraint_id = protocol.id_from_topic(self.prefix, topic)
            with self._lock:
                if self._burst is not None:
                    self._burst.add(constraint_id)
            change = protocol.decode(self.prefix, topic, payload, self._validate,
                                     signer=self._signer, retained=retained)  # fmt: skip
            if change.signed_at is not None:
                self._check_not_replayed(change.constraint_id, change.signed_at)
        except InvalidConstraint as exc:
            logger.error("cascade: rejected MQTT message on %s: %s", topic, exc)
            return
        with self._lock:
            if change.signed_at is not None:
                self._last_signed[change.constraint_id] = change.signed_at
            if change.constraint is None:
                self._known.pop(change.constraint_id, None)
            else:
                self._known[change.constraint_id] = change.constraint
        self._apply(change)

    def _check_not_replayed(self, constraint_id: str, signed_at: float) -> None:
        """Refuse a payload signed before the last one accepted for the same id."""
        last = self._last_signed.get(constraint_id)
        try:
            stored = self.store.last_signed_at(constraint_id)
        except redis.exceptions.RedisError:
            stored = None  # down: what this node remembers still applies
        last = max((t for t in (last, stored) if t is not None), default=None)
        if last is not None and signed_at < last:
            raise InvalidConstraint(
                f"signed before the last accepted change of {constraint_id} (a replay?)"
            )

    def _apply(self, change: protocol.Change, *, retry: bool = False) -> None:
        # One change at a time, so a retried change can never overwrite a newer one.
        with self._apply_lock:
            if retry and self._pending.get(change.constraint_id) is not change:
                return  # superseded by a newer message meanwhile
            try:
                self._store_locked(change)
            except HistoryLost:
                with self._lock:
                    self._pending[change.constraint_id] = change  # lost twice: next second
            except redis.exceptions.RedisError as exc:
                if not retry:
                    logger.warning("cascade: Redis unavailable (%s); constraint %s will be "
                                   "stored when it is back", exc, change.constraint_id)  # fmt: skip
                with self._lock:
                    self._pending[change.constraint_id] = change
            else:
                with self._lock:
                    self._pending.pop(change.constraint_id, None)

    def _store_locked(self, change: protocol.Change) -> None:
        """Write one change (holding _apply_lock), after the set if Redis lost it."""
        # A first write into an emptied Redis would hide the loss from the check (it
        # starts a new history): the other constraints go back first. The write itself
        # continues the history or writes nothing, as Redis can restart between the two.
        self._restore_locked()
        try:
            self._write(change, continuing=self._stored)
        except HistoryLost:
            self._write(change, continuing=self._restore_locked(lost=True))
        self._stored = True
        if change.signed_at is not None:
            self.store.record_signed_at(change.constraint_id, change.signed_at)

    def _write(self, change: protocol.Change, *, continuing: bool) -> None:
        if change.constraint is None:
            self.store.delete(change.constraint_id, continuing=continuing)
        else:
            self.store.put(change.constraint, continuing=continuing)

    def _retry_pending(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                pending = list(self._pending.values())
            for change in pending:
                self._apply(change, retry=True)
            try:
                self._restore_if_emptied()
            except redis.exceptions.RedisError:
                pass  # down: changes wait in _pending; checked again in a second
            except Exception:
                logger.exception("cascade: checking the stored constraints failed")

    def _restore_if_emptied(self) -> None:
        with self._apply_lock:
            self._restore_locked()

    def _restore_locked(self, *, lost: bool = False) -> bool:
        """Store the retained constraints again if Redis lost the set (holding _apply_lock).

        ``lost``: a write found the set lost. Return whether anything was stored.
        """
        now = time.time()
        with self._lock:
            known = [c for c in self._known.values() if not c.is_expired(now)]
        if not known:
            return False
        if not lost and (not self._stored or not self.synced.is_set()
                         or self.store.has_history()):  # fmt: skip
            return False
        logger.warning(
            "cascade: Redis lost the constraint set (restarted without persistence?); "
            "storing the %d retained constraint(s) again: %s",
            len(known), ", ".join(sorted(c.id for c in known)),
        )  # fmt: skip
        # One transaction: a restore cut short by another restart leaves no history
        # that would hide the rest.
        self.store.restore(known)
        return True

    def _end_of_burst(self) -> None:
        with self._lock:
            burst, self._burst = self._burst, None
            fresh = self._fresh_session
        try:
            if burst is not None and fresh:
                self._forget_absent(burst)
        except redis.exceptions.RedisError as exc:
            logger.warning("cascade: Redis unavailable (%s); constraints removed while this "
                           "node was offline are removed at the next reconnect", exc)  # fmt: skip
        finally:
            self.synced.set()

    def _forget_absent(self, burst: set[str]) -> None:
        stored = self.store.ids()
        absent = stored - burst
        if not absent:
            return
        if self._signer is not None:
            # Anyone who can publish can clear a retained message; only a signed
            # tombstone may remove a signed constraint.
            logger.warning(
                "cascade: %d constraint(s) in force have no retained message (%s); keeping "
                "them: with cascade_mqtt_secret set only a signed tombstone removes one",
                len(absent), ", ".join(sorted(absent)),
            )  # fmt: skip
            return
        if not burst:
            logger.warning(
                "cascade: the MQTT broker holds no retained constraints but %d are in force "
                "(%s); keeping them (a broker without persistence loses retained messages "
                "on restart). Publish them again, or remove them explicitly.",
                len(absent), ", ".join(sorted(absent)),
            )  # fmt: skip
            return
        for constraint_id in absent:
            logger.info("cascade: %s was removed while this node was offline", constraint_id)
            self.store.delete(constraint_id)
