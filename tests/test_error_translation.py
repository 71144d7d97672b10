"""Driver errors become ours where they enter: a store, a reader or a push helper whose database
or Redis goes away mid-use raises ``StorageUnavailable`` (503), a value a column cannot hold
raises ``UnstorableValue`` (422), and the API's error table names no driver at all."""

from __future__ import annotations

import inspect
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis

import serve_app.errors
from ingest.core.config import Settings
from ingest.core.errors import Conflict, StorageUnavailable, TenantNotFound, UnstorableValue
from ingest.core.net import free_port
from ingest.core.translate import translate
from ingest.push.idempotency import IdempotencyStore
from ingest.push.tags import PushTagCreate, PushTagMap
from ingest.read.catalog import Catalog, TagInfo
from ingest.read.query import read
from ingest.read.request import ReadRequest
from ingest.store.secrets import SecretBox
from ingest.store.tenant_store import TenantStore
from tests.conftest import fresh_database
from tests.tcp_proxy import TcpProxy


def test_the_rules() -> None:
    assert isinstance(translate(ConnectionResetError()), StorageUnavailable)
    assert isinstance(translate(TimeoutError()), StorageUnavailable)
    assert isinstance(translate(asyncpg.CannotConnectNowError("starting up")), StorageUnavailable)
    closed = asyncpg.ObjectNotInPrerequisiteStateError('database "t1" is not currently accepting connections')
    assert isinstance(translate(closed), StorageUnavailable)
    assert isinstance(translate(asyncpg.DataError("value out of int32 range: 3000000000")), UnstorableValue)
    # The text of a DataError may quote the value sent: ours does not repeat it.
    assert "3000000000" not in str(translate(asyncpg.DataError("value 3000000000")))
    # What a caller expects to catch, or a bug, stays as it is.
    # Two registrations of one name racing past the store's check: the unique index decides.
    assert isinstance(translate(asyncpg.UniqueViolationError("dup")), Conflict)
    assert translate(asyncpg.ForeignKeyViolationError("fk")) is None
    assert translate(asyncpg.ObjectNotInPrerequisiteStateError("currval is not yet defined")) is None
    assert translate(ValueError("x")) is None
    assert translate(TenantNotFound("t")) is None


def test_the_api_names_no_driver() -> None:
    src = inspect.getsource(serve_app.errors)
    assert "import asyncpg" not in src and "import redis" not in src and "from redis" not in src


async def test_tenant_store_and_reader_translate_an_outage_mid_use(stack: Settings) -> None:
    db = await fresh_database(stack, "xlate")
    proxy = TcpProxy(stack.pg_host, stack.pg_port)
    await proxy.start()
    dsn = stack.dsn(db).replace(f":{stack.pg_port}/", f":{proxy.port}/")
    store = await TenantStore.connect(dsn, SecretBox(stack.master_key))
    try:
        assert await store.list_connections() == []  # the pool works through the proxy
        # A value its column cannot hold: refused as a value, not as a crash.
        with pytest.raises(UnstorableValue):
            await store.get_connection("not-a-uuid")
        catalog = await Catalog.load(store.pool)
        await proxy.cut()
        with pytest.raises(StorageUnavailable):
            await store.list_connections()
        with pytest.raises(StorageUnavailable):
            await Catalog.load(store.pool)
        end = datetime.now(UTC)
        tag = TagInfo(1, "pressure", None, "bar", "double", False)
        req = ReadRequest([tag], end - timedelta(hours=1), end, "raw", 100, 100, False, None)
        with pytest.raises(StorageUnavailable):
            await read(store.pool, req, catalog.timezone)
        await proxy.restore()
        assert await store.list_connections() == []  # and it recovers once the link is back
    finally:
        await proxy.cut()
        await store.pool.close()


async def test_push_idempotency_translates_a_redis_outage() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    store = IdempotencyStore(client)
    with pytest.raises(StorageUnavailable, match="redis"):
        await store.abandon(str(uuid.uuid4()), "key-1")
    await client.aclose()


async def test_push_tags_answer_from_their_cache_while_the_database_is_closed(stack: Settings) -> None:
    """A tenant database closed to connections (as during a move) is an outage, not a 500; the
    pushed-tag map keeps answering for the tags it knows, so their pushes go on to the spool."""
    db = await fresh_database(stack, "xlate")
    su = await asyncpg.connect(stack.dsn("postgres"))
    pool = await asyncpg.create_pool(stack.dsn(db), min_size=1, max_size=2)
    tags = PushTagMap(pool, refresh_s=0.0, miss_reload_s=0.0)  # every call reloads
    never_loaded = PushTagMap(pool)
    try:
        await tags.register([PushTagCreate("WELL_1", "pressure", "bar")])
        known = ("WELL_1", "pressure")
        await su.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
        await su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db)
        await pool.expire_connections()  # the next use connects afresh (and is refused)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as refused:
            await asyncpg.connect(stack.dsn(db))
        assert isinstance(translate(refused.value), StorageUnavailable)
        got = await tags.resolve({known, ("WELL_1", "flow")})
        assert set(got) == {known} and got[known].unit == "bar"
        with pytest.raises(StorageUnavailable):
            await never_loaded.resolve({known})
        await su.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
        await tags.register([PushTagCreate("WELL_1", "flow", "m3/h")])
        assert set(await tags.resolve({known, ("WELL_1", "flow")})) == {known, ("WELL_1", "flow")}
    finally:
        await su.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
        await su.close()
        await pool.close()
