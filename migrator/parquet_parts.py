"""One Parquet file written a row group at a time, in memory that does not grow with its rows.

Arrow's `ParquetWriter` keeps the metadata of every row group it has written until the file
closes (~27 KB of heap per row group of the runs manifest, more in RSS), so the compaction of
a manifest of millions of runs held tens of MB for its footer alone. Here every row group is
written by Arrow as a small Parquet file of its own, in memory; its data pages are appended
to the output and its footer's row group, moved to its place in the file (thrift compact
protocol, the offsets shifted), to a spool file beside it. `close` writes the file's footer:
the first part's schema and key-value metadata, the row count, and the spooled row groups
copied a block at a time. What the writer holds is one row group and its encoded part.

The file is plain Parquet, read by any reader; `read_row_groups` reads one back a row group
at a time, with a footer of that one row group, so the reader's memory does not grow either.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

MAGIC = b"PAR1"

# Thrift compact protocol types (as they appear in field headers and list headers).
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = 1, 2, 3, 4, 5, 6, 7, 8
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12

#: A decoded struct: its fields in order as (field id, compact type, value). A bool's type is
#: `_TRUE`; its value says which. A list's value is (element type, [elements]).
Fields = list[tuple[int, int, Any]]

# Field ids of parquet.thrift that hold positions in the file.
_FILE_ROW_GROUPS, _FILE_NUM_ROWS = 4, 3
_GROUP_COLUMNS, _GROUP_NUM_ROWS, _GROUP_FILE_OFFSET, _GROUP_ORDINAL = 1, 3, 5, 7
_CHUNK_FILE_OFFSET, _CHUNK_META, _CHUNK_OFFSET_INDEX, _CHUNK_COLUMN_INDEX = 2, 3, 4, 6
#: ColumnMetaData: data page, index page, dictionary page and bloom filter offsets.
_META_OFFSETS = {9, 10, 11, 14}
#: A row group's ordinal is a thrift i16.
_MAX_ORDINAL = 2**15 - 1


class ThriftError(ValueError):
    """A footer that is not the thrift this module reads."""


# ---- thrift compact protocol -------------------------------------------------------------


#: Containers inside containers at most (a Parquet footer nests a few levels): a hostile
#: footer is an error, not a Python recursion error.
_MAX_DEPTH = 32


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def nested(self) -> None:
        if self.depth >= _MAX_DEPTH:
            raise ThriftError(f"footer nests deeper than {_MAX_DEPTH} levels")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ThriftError("footer ends inside a value")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ThriftError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ThriftError("footer ends inside a value")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def value(self, ctype: int) -> Any:
        if ctype in (_LIST, _SET, _MAP, _STRUCT):
            self.nested()
            self.depth += 1
            try:
                return self._value(ctype)
            finally:
                self.depth -= 1
        return self._value(ctype)

    def _value(self, ctype: int) -> Any:
        if ctype in (_TRUE, _FALSE):  # a bool inside a list: one byte
            return self.byte() == _TRUE
        if ctype == _BYTE:
            return self.byte()
        if ctype in (_I16, _I32, _I64):
            return self.zigzag()
        if ctype == _DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if ctype == _BINARY:
            return self.take(self.varint())
        if ctype in (_LIST, _SET):
            etype, size = self.list_head()
            return etype, [self.value(etype) for _ in range(size)]
        if ctype == _MAP:
            size = self.varint()
            if not size:
                return 0, 0, []
            kv = self.byte()
            kt, vt = kv >> 4, kv & 0x0F
            return kt, vt, [(self.value(kt), self.value(vt)) for _ in range(size)]
        if ctype == _STRUCT:
            return self.struct()
        raise ThriftError(f"unknown thrift type {ctype}")

    def skip(self, ctype: int) -> None:
        """Move past one value without building it."""
        self.nested()
        self.depth += 1
        try:
            self._skip(ctype)
        finally:
            self.depth -= 1

    def _skip(self, ctype: int) -> None:
        if ctype in (_TRUE, _FALSE, _BYTE):
            self.take(1)
        elif ctype in (_I16, _I32, _I64):
            self.varint()
        elif ctype == _DOUBLE:
            self.take(8)
        elif ctype == _BINARY:
            self.take(self.varint())
        elif ctype in (_LIST, _SET):
            etype, size = self.list_head()
            for _ in range(size):
                self.skip(etype)
        elif ctype == _MAP:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4)
                    self.skip(kv & 0x0F)
        elif ctype == _STRUCT:
            for _, field_type in self.fields():
                self.skip_field(field_type)
        else:
            raise ThriftError(f"unknown thrift type {ctype}")

    def fields(self) -> Iterator[tuple[int, int]]:
        """The (id, type) of each field of a struct in turn, to its stop byte; the caller
        reads (`field`) or skips (`skip_field`) each value before asking for the next."""
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return
            last = last + (head >> 4) if head >> 4 else self.zigzag()
            yield last, head & 0x0F

    def field(self, fid: int, ctype: int) -> tuple[int, int, Any]:
        """A field as `Fields` hold it (a bool field's value is its type)."""
        if ctype in (_TRUE, _FALSE):
            return fid, _TRUE, ctype == _TRUE
        return fid, ctype, self.value(ctype)

    def skip_field(self, ctype: int) -> None:
        if ctype not in (_TRUE, _FALSE):
            self.skip(ctype)

    def list_head(self) -> tuple[int, int]:
        """A list's element type and size."""
        head = self.byte()
        size = head >> 4 if head >> 4 != 15 else self.varint()
        return head & 0x0F, size

    def struct(self) -> Fields:
        return [self.field(fid, ctype) for fid, ctype in self.fields()]


def decode_struct(data: bytes) -> Fields:
    """One thrift compact struct (a Parquet footer is one `FileMetaData`)."""
    return _Reader(data).struct()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _list_head(etype: int, size: int) -> bytes:
    return bytes([size << 4 | etype]) if size < 15 else bytes([0xF0 | etype]) + _varint(size)


def _encode_value(ctype: int, value: Any) -> bytes:
    if ctype in (_TRUE, _FALSE):
        return bytes([_TRUE if value else _FALSE])
    if ctype == _BYTE:
        return bytes([value])
    if ctype in (_I16, _I32, _I64):
        return _zigzag(value)
    if ctype == _DOUBLE:
        return struct.pack("<d", value)
    if ctype == _BINARY:
        return _varint(len(value)) + bytes(value)
    if ctype in (_LIST, _SET):
        etype, items = value
        return _list_head(etype, len(items)) + b"".join(_encode_value(etype, v) for v in items)
    if ctype == _MAP:
        kt, vt, pairs = value
        if not pairs:
            return b"\x00"
        body = b"".join(_encode_value(kt, k) + _encode_value(vt, v) for k, v in pairs)
        return _varint(len(pairs)) + bytes([kt << 4 | vt]) + body
    if ctype == _STRUCT:
        return encode_struct(value)
    raise ThriftError(f"unknown thrift type {ctype}")


def _field_head(last: int, fid: int, ctype: int) -> bytes:
    delta = fid - last
    return bytes([delta << 4 | ctype]) if 0 < delta <= 15 else bytes([ctype]) + _zigzag(fid)


def encode_fields(fields: Fields, last: int = 0) -> bytes:
    """Fields of a struct, without its stop byte (`last`: the id of the field before them)."""
    out = bytearray()
    for fid, ctype, value in fields:
        if ctype in (_TRUE, _FALSE):
            out += _field_head(last, fid, _TRUE if value else _FALSE)
        else:
            out += _field_head(last, fid, ctype) + _encode_value(ctype, value)
        last = fid
    return bytes(out)


def encode_struct(fields: Fields) -> bytes:
    return encode_fields(fields) + b"\x00"


# ---- moving a row group ------------------------------------------------------------------


def _shift(fields: Fields, ids: set[int], by: int) -> Fields:
    """The fields with the offsets among `ids` moved by `by` (0 stays: it means unset)."""
    return [(f, t, v + by if f in ids and t == _I64 and v > 0 else v) for f, t, v in fields]


def moved_row_group(group: Fields, by: int, ordinal: int) -> Fields:
    """A footer's `RowGroup` for its data moved `by` bytes further into a file, as the
    `ordinal`-th row group of it."""
    out: Fields = []
    for fid, ctype, value in _shift(group, {_GROUP_FILE_OFFSET}, by):
        if fid == _GROUP_COLUMNS:
            etype, chunks = value
            value = (etype, [_moved_chunk(c, by) for c in chunks])
        elif fid == _GROUP_ORDINAL:
            if ordinal > _MAX_ORDINAL:  # optional, and an i16: left out past its range
                continue
            value = ordinal
        out.append((fid, ctype, value))
    return out


def _moved_chunk(chunk: Fields, by: int) -> Fields:
    ids = {_CHUNK_FILE_OFFSET, _CHUNK_OFFSET_INDEX, _CHUNK_COLUMN_INDEX}
    return [
        (f, t, _shift(v, _META_OFFSETS, by) if f == _CHUNK_META else v)
        for f, t, v in _shift(chunk, ids, by)
    ]


def _split(data: bytes, what: str) -> tuple[bytes, Fields]:
    """A whole Parquet file's bytes: its data (after the leading magic) and its footer."""
    if len(data) < 12 or data[:4] != MAGIC or data[-4:] != MAGIC:
        raise ThriftError(f"{what}: not a Parquet file")
    (size,) = struct.unpack("<I", data[-8:-4])
    if size > len(data) - 12:
        raise ThriftError(f"{what}: footer longer than the file")
    return data[4 : len(data) - 8 - size], decode_struct(data[len(data) - 8 - size : -8])


class PartsWriter:
    """A Parquet file at `path`, written one table (one row group) at a time by `write`.

    Memory: one table's encoded part, whatever the number of row groups; the row groups'
    footer entries wait in a spool file until `close` writes the footer.
    """

    def __init__(self, path: str, schema: pa.Schema, **options: Any) -> None:
        self.schema = schema
        self.options = options
        self.rows = 0
        self.groups = 0
        self._head: Fields | None = None  # the first part's footer: schema, metadata
        self._out: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._out.write(MAGIC)
        self._spool: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()

    def write(self, table: pa.Table) -> None:
        """Append `table` as one row group (an empty table adds nothing)."""
        if table.num_rows:
            self._part(table)

    def _part(self, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(
            table.cast(self.schema), buf, row_group_size=max(table.num_rows, 1), **self.options
        )
        data, footer = _split(buf.getvalue(), "part")
        del buf
        by = self._out.tell() - len(MAGIC)
        if self._head is None:
            self._head = _head_of(footer)
        for fid, _, value in footer:
            if fid == _FILE_ROW_GROUPS:
                for group in value[1]:
                    self._spool.write(encode_struct(moved_row_group(group, by, self.groups)))
                    self.groups += 1
            elif fid == _FILE_NUM_ROWS:
                self.rows += value
        self._out.write(data)

    def close(self) -> None:
        """Write the footer and close the file (a file of no rows still has its schema)."""
        if self._out.closed:
            return
        try:
            if self._head is None:  # no rows: the schema and metadata of an empty part
                self._head = _head_of(_split(_empty_part(self.schema, self.options), "part")[1])
            start = self._out.tell()
            self._out.write(_footer_start(self._head, self.rows, self.groups))
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self._out)
            self._out.write(_footer_end(self._head))
            self._out.write(struct.pack("<I", self._out.tell() - start) + MAGIC)
        finally:
            self._out.close()
            self._spool.close()

    def abort(self) -> None:
        """Close without a footer (the file is left incomplete; its folder is the caller's)."""
        self._out.close()
        self._spool.close()


def _head_of(footer: Fields) -> Fields:
    """A footer's fields but its row groups (`_footer_start` and `_footer_end` write them
    around the row groups, with the row count of the whole file)."""
    return [f for f in footer if f[0] != _FILE_ROW_GROUPS]


def _empty_part(schema: pa.Schema, options: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf, **options)
    return buf.getvalue()


# ---- reading a row group at a time -------------------------------------------------------


def _footer_bounds(f: BinaryIO, size: int, what: str) -> tuple[int, int]:
    if size < 12:
        raise ThriftError(f"{what}: not a Parquet file")
    f.seek(size - 8)
    tail = f.read(8)
    (length,) = struct.unpack("<I", tail[:4])
    if tail[4:] != MAGIC or length > size - 12:
        raise ThriftError(f"{what}: not a Parquet file")
    return size - 8 - length, length


def _scan_footer(data: bytes) -> tuple[Fields, list[tuple[int, int]]]:
    """A `FileMetaData`: its fields but the row groups, and where each row group is in it
    (skipped over, not decoded: a file of many row groups holds only their spans)."""
    r = _Reader(data)
    head: Fields = []
    spans: list[tuple[int, int]] = []
    for fid, ctype in r.fields():
        if fid == _FILE_ROW_GROUPS and ctype == _LIST:
            _, size = r.list_head()
            for _ in range(size):
                begin = r.pos
                r.skip(_STRUCT)
                spans.append((begin, r.pos))
        else:
            head.append(r.field(fid, ctype))
    return head, spans


def _footer_start(head: Fields, rows: int, groups: int) -> bytes:
    """A `FileMetaData` up to its row groups: `head`'s version and schema, the row count, and
    the head of a list of `groups` row groups (which follow it, encoded)."""
    before = [x for x in head if x[0] < _FILE_NUM_ROWS]
    return (
        encode_fields(before)
        + encode_fields([(_FILE_NUM_ROWS, _I64, rows)], _FILE_NUM_ROWS - 1)
        + _field_head(_FILE_NUM_ROWS, _FILE_ROW_GROUPS, _LIST)
        + _list_head(_STRUCT, groups)
    )


def _footer_end(head: Fields) -> bytes:
    """A `FileMetaData` after its row groups: `head`'s key-value metadata, writer, orders."""
    return encode_fields([x for x in head if x[0] > _FILE_ROW_GROUPS], _FILE_ROW_GROUPS) + b"\x00"


def read_row_groups(path: str, what: str, **options: Any) -> Iterator[pa.Table]:
    """The row groups of the Parquet file at `path`, one table each, in order. Each is read
    with a footer of its own (the file's schema and that one row group), so what is held is
    one row group and its metadata, not the metadata of all of them.

    `options` go to `pyarrow.parquet.ParquetFile.read` (e.g. `columns`, `use_threads`).
    Raises `ThriftError` for a file whose footer cannot be read."""
    with open(path, "rb") as f:
        start, length = _footer_bounds(f, os.fstat(f.fileno()).st_size, what)
        f.seek(start)
        try:
            head, spans = _scan_footer(f.read(length))
        except ThriftError as e:
            raise ThriftError(f"{what}: {e}") from None
        for begin, end in spans:
            f.seek(start + begin)
            group = f.read(end - begin)
            rows = _top_level_field(group, _GROUP_NUM_ROWS) or 0
            one = _footer_start(head, rows, 1) + group + _footer_end(head)
            tail = struct.pack("<I", len(one)) + MAGIC
            metadata = pq.read_metadata(io.BytesIO(MAGIC + one + tail))
            yield pq.ParquetFile(path, metadata=metadata, pre_buffer=False).read(**options)


def _top_level_field(data: bytes, wanted: int) -> Any:
    """One field of an encoded struct (None when it is not there), the others skipped."""
    r = _Reader(data)
    for fid, ctype in r.fields():
        if fid == wanted:
            return r.field(fid, ctype)[2]
        r.skip_field(ctype)
    return None
