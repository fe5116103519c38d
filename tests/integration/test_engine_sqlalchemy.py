from __future__ import annotations

import asyncio
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import orm
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

pytestmark = pytest.mark.timeout(120)


def sqlalchemy_url(url: str, driver: str = "psycopg") -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"postgresql+{driver}://{rest}"


@pytest.mark.parametrize(
    ("url", "driver", "expected"),
    [
        ("postgresql://u@h:5/d?x=1", "psycopg", "postgresql+psycopg://u@h:5/d?x=1"),
        ("postgres://u:p@h/d", "psycopg_async", "postgresql+psycopg_async://u:p@h/d"),
        ("postgresql+psycopg2://h/d", "psycopg", "postgresql+psycopg://h/d"),
    ],
)
def test_sqlalchemy_url(url: str, driver: str, expected: str) -> None:
    assert sqlalchemy_url(url, driver) == expected


def test_sqlalchemy_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        sqlalchemy_url("mysql://h/d")


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    name = f"sa_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"create schema {name}")
    yield name
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"drop schema if exists {name} cascade")


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(sqlalchemy_url(database_url))
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlalchemy_url(database_url, "psycopg_async"))
    try:
        yield eng
    finally:
        await eng.dispose()


class _Models:
    def __init__(self, schema: str) -> None:
        class Base(orm.DeclarativeBase):
            metadata = sa.MetaData(schema=schema)

        class Product(Base):
            __tablename__ = "product"
            id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
            name: orm.Mapped[str] = orm.mapped_column(sa.Text, unique=True)
            price: orm.Mapped[Decimal] = orm.mapped_column(sa.Numeric(12, 2))
            tags: orm.Mapped[list[str]] = orm.mapped_column(ARRAY(sa.Text), default=list)
            attrs: orm.Mapped[dict[str, Any]] = orm.mapped_column(JSONB, default=dict)
            uid: orm.Mapped[uuid.UUID] = orm.mapped_column(default=uuid.uuid4)
            created: orm.Mapped[datetime] = orm.mapped_column(
                sa.DateTime(timezone=True), server_default=sa.func.now()
            )
            reviews: orm.Mapped[list[Review]] = orm.relationship(
                back_populates="product", cascade="all, delete-orphan", order_by="Review.id"
            )

        class Review(Base):
            __tablename__ = "review"
            id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
            product_id: orm.Mapped[int] = orm.mapped_column(
                sa.ForeignKey(Product.id, ondelete="cascade")
            )
            stars: orm.Mapped[int]
            body: orm.Mapped[str | None]
            product: orm.Mapped[Product] = orm.relationship(back_populates="reviews")

        self.Base = Base
        self.Product = Product
        self.Review = Review

    def catalogue(self, n: int) -> list[Any]:
        return [
            self.Product(
                name=f"product {i} ✓",
                price=Decimal(i) + Decimal("0.99"),
                tags=[f"t{i % 3}", "all"],
                attrs={"i": i, "even": i % 2 == 0},
                reviews=[self.Review(stars=1 + (i + k) % 5, body=f"r{k}") for k in range(i % 4)],
            )
            for i in range(n)
        ]


def _table_exists(bind: sa.Connection, schema: str, table: str) -> bool:
    return sa.inspect(bind).has_table(table, schema=schema)


# --- sync engine ----------------------------------------------------------------------------


def test_core_round_trip_of_many_types(engine: sa.Engine, schema: str) -> None:
    meta = sa.MetaData(schema=schema)
    table = sa.Table(
        "typed",
        meta,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("n", sa.Numeric(30, 10)),
        sa.Column("t", sa.Text),
        sa.Column("b", sa.LargeBinary),
        sa.Column("ts", sa.DateTime(timezone=True)),
        sa.Column("j", JSONB),
        sa.Column("a", ARRAY(sa.Integer)),
        sa.Column("f", sa.Boolean),
        sa.Column("u", sa.Uuid),
    )
    row = {
        "id": 2**62,
        "n": Decimal("12345678901234567890.0123456789"),
        "t": "ünïcødé ✓ 'quote'",
        "b": bytes(range(256)),
        "ts": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "j": {"nested": [1, {"x": None}], "ü": True},
        "a": [3, 1, 2],
        "f": False,
        "u": uuid.uuid4(),
    }
    with engine.begin() as c:
        meta.create_all(c)
        c.execute(table.insert(), row)
        c.execute(table.insert().values(id=1))
    with engine.connect() as c:
        got = c.execute(sa.select(table).where(table.c.id == 2**62)).mappings().one()
        assert dict(got) == row
        nulls = c.execute(sa.select(table).where(table.c.id == 1)).one()
        assert nulls[1:] == (None,) * 8
        assert c.scalar(sa.select(sa.func.count()).where(table.c.j["ü"].as_boolean())) == 1


def test_orm_create_insert_select_update_delete(engine: sa.Engine, schema: str) -> None:
    m = _Models(schema)
    m.Base.metadata.create_all(engine)
    with engine.connect() as c:
        assert _table_exists(c, schema, "product")
        assert _table_exists(c, schema, "review")

    with orm.Session(engine) as session, session.begin():
        session.add_all(m.catalogue(60))

    with orm.Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count(m.Product.id))) == 60
        assert session.scalar(sa.select(sa.func.count(m.Review.id))) == sum(
            i % 4 for i in range(60)
        )
        p7 = session.scalars(sa.select(m.Product).where(m.Product.name == "product 7 ✓")).one()
        assert p7.price == Decimal("7.99")
        assert p7.attrs == {"i": 7, "even": False}
        assert p7.tags == ["t1", "all"]
        assert [r.stars for r in p7.reviews] == [3, 4, 5]
        assert p7.created.tzinfo is not None
        expensive = session.scalars(
            sa.select(m.Product.name).where(m.Product.price > 55).order_by(m.Product.price.desc())
        ).all()
        assert expensive == [f"product {i} ✓" for i in (59, 58, 57, 56, 55)]
        best = session.execute(
            sa.select(m.Product.name, sa.func.avg(m.Review.stars))
            .join(m.Product.reviews)
            .group_by(m.Product.name)
            .order_by(sa.func.avg(m.Review.stars).desc(), m.Product.name)
            .limit(1)
        ).one()
        assert best[1] == 5

    with orm.Session(engine) as session, session.begin():
        p7 = session.scalars(sa.select(m.Product).where(m.Product.name == "product 7 ✓")).one()
        p7.price = Decimal("70.00")
        p7.attrs = {**p7.attrs, "edited": True}
        p7.reviews[0].body = "edited"
        for p in session.scalars(sa.select(m.Product).where(m.Product.id.in_([1, 2, 3]))):
            p.tags = [*p.tags, "touched"]
        result = session.execute(
            sa.update(m.Product).where(m.Product.price < 5).values(price=m.Product.price * 10)
        )
        assert result.rowcount == 5

    with orm.Session(engine) as session, session.begin():
        p7 = session.scalars(sa.select(m.Product).where(m.Product.name == "product 7 ✓")).one()
        assert (p7.price, p7.attrs["edited"], p7.reviews[0].body) == (
            Decimal("70.00"),
            True,
            "edited",
        )
        touched = session.scalars(
            sa.select(sa.func.count()).where(m.Product.tags.contains(["touched"]))
        ).one()
        assert touched == 3
        assert session.scalar(sa.select(sa.func.min(m.Product.price))) == Decimal("5.99")
        session.delete(p7)
        session.execute(sa.delete(m.Product).where(m.Product.price > 50))

    with orm.Session(engine) as session:
        names = session.scalars(sa.select(m.Product.name)).all()
        assert len(names) == 49
        assert "product 7 ✓" not in names
        orphans = session.scalar(
            sa.select(sa.func.count(m.Review.id)).where(
                ~sa.exists().where(m.Product.id == m.Review.product_id)
            )
        )
        assert orphans == 0

    m.Base.metadata.drop_all(engine)
    with engine.connect() as c:
        assert not _table_exists(c, schema, "product")


def test_orm_session_rollback(engine: sa.Engine, schema: str) -> None:
    m = _Models(schema)
    m.Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        session.add_all(m.catalogue(5))
        session.commit()

    with orm.Session(engine) as session:
        session.add(m.Product(name="temporary", price=Decimal("1.00")))
        session.execute(sa.update(m.Product).values(price=0))
        session.execute(sa.delete(m.Review))
        session.flush()
        assert session.scalar(sa.select(sa.func.count(m.Product.id))) == 6
        assert session.scalar(sa.select(sa.func.sum(m.Product.price))) == 0
        session.rollback()
        assert session.scalar(sa.select(sa.func.count(m.Product.id))) == 5

    with pytest.raises(sa.exc.IntegrityError), orm.Session(engine) as session, session.begin():
        session.add(m.Product(name="also temporary", price=Decimal("2.00")))
        session.flush()
        session.add(m.Product(name="product 1 ✓", price=Decimal("3.00")))

    with orm.Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count(m.Product.id))) == 5
        assert session.scalar(sa.select(sa.func.count(m.Review.id))) == sum(i % 4 for i in range(5))
        assert session.scalar(sa.select(sa.func.sum(m.Product.price))) == sum(
            Decimal(i) + Decimal("0.99") for i in range(5)
        )


def test_pool_of_three_used_by_three_threads(database_url: str, schema: str) -> None:
    eng = sa.create_engine(
        sqlalchemy_url(database_url), pool_size=3, max_overflow=0, pool_timeout=20
    )
    meta = sa.MetaData(schema=schema)
    table = sa.Table(
        "hits",
        meta,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("worker", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("half", sa.Integer, nullable=False),
    )
    threads_n, transactions, rows_per_tx = 3, 50, 2
    barrier = threading.Barrier(threads_n, timeout=20)
    connections: set[int] = set()
    checked_out: list[int] = []
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with eng.connect() as c:
                connections.add(id(c.connection.dbapi_connection))
                barrier.wait()
                checked_out.append(eng.pool.checkedout())
                barrier.wait()
                for seq in range(transactions):
                    with c.begin():
                        c.execute(
                            table.insert(),
                            [{"worker": worker, "seq": seq, "half": h} for h in range(rows_per_tx)],
                        )
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    try:
        meta.create_all(eng)
        threads = [threading.Thread(target=work, args=(w,)) for w in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert not failures, failures
        assert len(connections) == threads_n
        assert checked_out == [threads_n] * threads_n
        with eng.connect() as c:
            total = c.scalar(sa.select(sa.func.count()).select_from(table))
            assert total == threads_n * transactions * rows_per_tx
            per_worker = c.execute(
                sa.select(table.c.worker, sa.func.count(sa.distinct(table.c.seq)))
                .group_by(table.c.worker)
                .order_by(table.c.worker)
            ).all()
            assert per_worker == [(w, transactions) for w in range(threads_n)]
    finally:
        eng.dispose()


STREAM_ROWS = 5000


def test_streaming_results_through_a_server_side_cursor(engine: sa.Engine, schema: str) -> None:
    m = _Models(schema)
    m.Base.metadata.create_all(engine)
    with orm.Session(engine) as session, session.begin():
        session.execute(
            sa.insert(m.Product),
            [{"name": f"p{i}", "price": Decimal(i) / 100} for i in range(STREAM_ROWS)],
        )
    with engine.connect() as c:
        result = c.execution_options(stream_results=True, max_row_buffer=500).execute(
            sa.select(m.Product.name, m.Product.price).order_by(m.Product.id)
        )
        assert result.cursor.name is not None  # psycopg names only server-side cursors
        seen = [row for partition in result.partitions(700) for row in partition]
    assert len(seen) == STREAM_ROWS
    assert sum(price for _, price in seen) == Decimal(STREAM_ROWS * (STREAM_ROWS - 1) // 2) / 100
    with orm.Session(engine) as session:
        names = [
            p.name for p in session.scalars(sa.select(m.Product).execution_options(yield_per=250))
        ]
    assert names == [f"p{i}" for i in range(STREAM_ROWS)]


async def test_async_streaming_results(async_engine: AsyncEngine) -> None:
    async with async_engine.connect() as c:
        result = await c.stream(
            sa.select(sa.func.generate_series(1, STREAM_ROWS).label("g")).execution_options(
                yield_per=400
            )
        )
        total = 0
        count = 0
        async for partition in result.partitions():
            count += len(partition)
            total += sum(row.g for row in partition)
    assert (count, total) == (STREAM_ROWS, STREAM_ROWS * (STREAM_ROWS + 1) // 2)


# --- async engine ---------------------------------------------------------------------------


async def test_async_orm_create_insert_select_update_delete(
    async_engine: AsyncEngine, schema: str
) -> None:
    m = _Models(schema)
    async with async_engine.begin() as c:
        await c.run_sync(m.Base.metadata.create_all)
        assert await c.run_sync(_table_exists, schema, "review")

    sessions = async_sessionmaker(async_engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        session.add_all(m.catalogue(40))

    async with sessions() as session:
        assert await session.scalar(sa.select(sa.func.count(m.Product.id))) == 40
        p3 = (
            await session.scalars(
                sa.select(m.Product)
                .where(m.Product.name == "product 3 ✓")
                .options(orm.selectinload(m.Product.reviews))
            )
        ).one()
        assert (p3.price, p3.tags, [r.stars for r in p3.reviews]) == (
            Decimal("3.99"),
            ["t0", "all"],
            [4, 5, 1],
        )

    async with sessions() as session, session.begin():
        p3 = await session.get_one(m.Product, p3.id)
        p3.price = Decimal("333.33")
        await session.execute(sa.update(m.Product).where(m.Product.id < 3).values(tags=["cheap"]))
        await session.execute(sa.delete(m.Product).where(m.Product.price > 30))

    async with sessions() as session:
        rows = (await session.execute(sa.select(m.Product.id, m.Product.tags))).all()
        assert len(rows) == 29
        assert sum(1 for _, tags in rows if tags == ["cheap"]) == 2
        assert await session.get(m.Product, p3.id) is None

    async with sessions() as session:
        session.add(m.Product(name="rolled back", price=Decimal(1)))
        await session.flush()
        assert await session.scalar(sa.select(sa.func.count(m.Product.id))) == 30
        await session.rollback()
    async with sessions() as session:
        assert await session.scalar(sa.select(sa.func.count(m.Product.id))) == 29

    async with async_engine.begin() as c:
        await c.run_sync(m.Base.metadata.drop_all)
        assert not await c.run_sync(_table_exists, schema, "product")


async def test_async_pool_of_three_used_by_concurrent_tasks(database_url: str, schema: str) -> None:
    eng = create_async_engine(
        sqlalchemy_url(database_url, "psycopg_async"), pool_size=3, max_overflow=0
    )
    meta = sa.MetaData(schema=schema)
    table = sa.Table(
        "events",
        meta,
        sa.Column("task", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("task", "seq"),
    )

    async def work(task: int) -> None:
        async with eng.connect() as c:
            for seq in range(30):
                async with c.begin():
                    await c.execute(table.insert().values(task=task, seq=seq))

    try:
        async with eng.begin() as c:
            await c.run_sync(meta.create_all)
        await asyncio.wait_for(asyncio.gather(*(work(t) for t in range(3))), 60)
        async with eng.connect() as c:
            rows = (
                await c.execute(
                    sa.select(table.c.task, sa.func.count(), sa.func.sum(table.c.seq))
                    .group_by(table.c.task)
                    .order_by(table.c.task)
                )
            ).all()
        assert rows == [(t, 30, sum(range(30))) for t in range(3)]
    finally:
        await eng.dispose()


# --- alembic --------------------------------------------------------------------------------

ENV_PY = """
from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
schema = config.get_main_option("toy_schema")
connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}),
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        version_table="toy_alembic_version",
        version_table_schema=schema,
    )
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION_1 = """
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "toy0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "{schema}"


def upgrade() -> None:
    op.create_table(
        "widget",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.bulk_insert(
        sa.table("widget", sa.column("id"), sa.column("name"), schema=SCHEMA),
        [{{"id": 1, "name": "first"}}, {{"id": 2, "name": "second"}}],
    )


def downgrade() -> None:
    op.drop_table("widget", schema=SCHEMA)
"""

REVISION_2 = """
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "toy0002"
down_revision = "toy0001"
branch_labels = None
depends_on = None
SCHEMA = "{schema}"


def upgrade() -> None:
    op.add_column(
        "widget", sa.Column("price", sa.Numeric(10, 2), server_default="9.99"), schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_column("widget", "price", schema=SCHEMA)
"""


def _toy_alembic(tmp_path: Path, url: str, schema: str) -> Config:
    script_dir = tmp_path / "toy_alembic"
    (script_dir / "versions").mkdir(parents=True)
    (script_dir / "env.py").write_text(textwrap.dedent(ENV_PY))
    (script_dir / "versions" / "toy0001_create_widget.py").write_text(
        REVISION_1.format(schema=schema)
    )
    (script_dir / "versions" / "toy0002_add_price.py").write_text(REVISION_2.format(schema=schema))
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = toy_alembic\n")
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(script_dir))
    # ConfigParser interpolation would read a '%' in the URL as a reference.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("toy_schema", schema)
    return cfg


def _widget_state(database_url: str, schema: str) -> tuple[list[str], str | None]:
    with psycopg.connect(database_url, autocommit=True) as c:
        columns = [
            r[0]
            for r in c.execute(
                "select column_name from information_schema.columns"
                " where table_schema = %s and table_name = 'widget' order by ordinal_position",
                (schema,),
            )
        ]
        version = None
        if c.execute("select to_regclass(%s)", (f"{schema}.toy_alembic_version",)).fetchone() != (
            None,
        ):
            row = c.execute(f"select version_num from {schema}.toy_alembic_version").fetchone()
            version = row[0] if row else None
    return columns, version


def test_alembic_upgrade_downgrade_upgrade(tmp_path: Path, database_url: str, schema: str) -> None:
    cfg = _toy_alembic(tmp_path, sqlalchemy_url(database_url), schema)

    command.upgrade(cfg, "toy0001")
    assert _widget_state(database_url, schema) == (["id", "name"], "toy0001")

    command.upgrade(cfg, "head")
    assert _widget_state(database_url, schema) == (["id", "name", "price"], "toy0002")
    with psycopg.connect(database_url, autocommit=True) as c:
        rows = c.execute(f"select id, name, price from {schema}.widget order by id").fetchall()
    assert rows == [(1, "first", Decimal("9.99")), (2, "second", Decimal("9.99"))]

    command.downgrade(cfg, "base")
    assert _widget_state(database_url, schema) == ([], None)

    command.upgrade(cfg, "head")
    assert _widget_state(database_url, schema) == (["id", "name", "price"], "toy0002")
    command.downgrade(cfg, "-1")
    assert _widget_state(database_url, schema) == (["id", "name"], "toy0001")
