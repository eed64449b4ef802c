"""Single-row reads in plain SQL, for the lookups every API request makes
(its token, user, tenant, roles and knowledge base).

On a small server the ORM spends most of a millisecond building each query —
many times what the query itself costs (bench/search_latency.py). These
helpers send one fixed statement through Django's cursor and build the model
instance with the fields' own converters, so what they return is what the
ORM would have returned. Lookups are exact matches on columns that identify
one row; anything richer belongs to the ORM.
"""
from __future__ import annotations

import functools

from django.db import connection

_BIGINT = range(-(2 ** 63), 2 ** 63)


@functools.lru_cache(maxsize=64)
def _plan(vendor: str, model, where: tuple[str, ...], columns: tuple[str, ...] | None):
    meta = model._meta
    quote = connection.ops.quote_name
    fields = [meta.get_field(name) for name in columns] if columns else list(meta.concrete_fields)
    conditions = " AND ".join(f"{quote(meta.get_field(name).column)} = %s" for name in where)
    sql = (f"SELECT {', '.join(quote(f.column) for f in fields)} FROM {quote(meta.db_table)} "
           f"WHERE {conditions}")
    converters = []
    for index, field in enumerate(fields):
        column = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if found:
            converters.append((index, column, found))
    return sql, [f.attname for f in fields], converters


def _where(model, lookup: dict) -> tuple[tuple[str, ...], list] | None:
    names, params = [], []
    for name, value in lookup.items():
        if isinstance(value, int) and not isinstance(value, bool) and value not in _BIGINT:
            return None  # no row has such an id; the driver would refuse the number
        names.append(model._meta.pk.attname if name == "pk" else name)
        params.append(value)
    return tuple(names), params


def _converted(row, converters) -> list:
    values = list(row)
    for index, column, found in converters:
        for convert in found:
            values[index] = convert(values[index], column, connection)
    return values


def row_get(model, **lookup):
    """The instance of ``model`` whose columns equal ``lookup`` (names or
    attnames, ``pk`` allowed), or None."""
    where = _where(model, lookup)
    if where is None:
        return None
    sql, attnames, converters = _plan(connection.vendor, model, where[0], None)
    with connection.cursor() as cursor:
        cursor.execute(sql + " LIMIT 1", where[1])
        row = cursor.fetchone()
    if row is None:
        return None
    return model.from_db(connection.alias, attnames, _converted(row, converters))


@functools.lru_cache(maxsize=16)
def _joined_plan(vendor: str, model, where: tuple[str, ...], related: tuple[str, ...]):
    """One SELECT of ``model``'s row and the rows its foreign keys ``related``
    point to (an inner join each, as select_related would build)."""
    quote = connection.ops.quote_name
    meta = model._meta
    parts = [(None, model, "t0")] + [(name, meta.get_field(name).related_model, f"t{i}")
                                      for i, name in enumerate(related, 1)]
    columns, plans = [], []
    for name, part_model, alias in parts:
        _, attnames, converters = _plan(vendor, part_model, (part_model._meta.pk.attname,), None)
        plans.append((name, part_model, len(columns), attnames, converters))
        columns += [f"{alias}.{quote(f.column)}" for f in part_model._meta.concrete_fields]
    joins = " ".join(
        f"JOIN {quote(part_model._meta.db_table)} {alias} ON {alias}.{quote(part_model._meta.pk.column)} = "
        f"t0.{quote(meta.get_field(name).column)}" for name, part_model, alias in parts[1:])
    conditions = " AND ".join(f"t0.{quote(meta.get_field(name).column)} = %s" for name in where)
    return f"SELECT {', '.join(columns)} FROM {quote(meta.db_table)} t0 {joins} WHERE {conditions}", plans


def row_get_related(model, related: tuple[str, ...], **lookup):
    """``row_get`` with the rows of the foreign keys ``related`` read in the
    same statement and set on the instance; None if any of them is missing."""
    where = _where(model, lookup)
    if where is None:
        return None
    sql, plans = _joined_plan(connection.vendor, model, where[0], related)
    with connection.cursor() as cursor:
        cursor.execute(sql + " LIMIT 1", where[1])
        row = cursor.fetchone()
    if row is None:
        return None
    instances = {}
    for name, part_model, start, attnames, converters in plans:
        values = _converted(row[start:start + len(attnames)], converters)
        instances[name] = part_model.from_db(connection.alias, attnames, values)
    instance = instances.pop(None)
    for name, related_instance in instances.items():
        setattr(instance, name, related_instance)
    return instance


def column_values(model, column: str, **lookup) -> list:
    """The values of one column over the rows that match ``lookup``."""
    where = _where(model, lookup)
    if where is None:
        return []
    sql, _, converters = _plan(connection.vendor, model, where[0], (column,))
    with connection.cursor() as cursor:
        cursor.execute(sql, where[1])
        return [_converted(row, converters)[0] for row in cursor.fetchall()]
