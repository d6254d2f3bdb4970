#!/usr/bin/env python3
"""Regenerates vectors.txt: the shared wire-protocol test vectors (see ../PROTOCOL.md §7).

This is an independent third encoder of the protocol (beside the C and Swift clients), written
straight from the spec. Run it after changing the spec; commit the output. `gen_vectors.py FILE`
writes FILE instead (the tests check that the committed file is what this script writes).
"""
import math
import struct
import sys
from pathlib import Path

MAGIC = 0xF5
KINDS = {"counter_add": 1, "gauge_set": 2, "gauge_add": 3, "histogram_observe": 4, "distinct_add": 5, "topk_add": 6}
KEY_KINDS = {"distinct_add", "topk_add"}


def uvarint(n: int) -> bytes:
    assert 0 <= n < 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def svarint(n: int) -> bytes:
    assert -(1 << 63) <= n < 1 << 63
    return uvarint(((n << 1) ^ (n >> 63)) & ((1 << 64) - 1))


def string(s: str) -> bytes:
    b = s.encode("utf-8")
    return uvarint(len(b)) + b


def value(v: float) -> tuple[int, bytes]:
    """Canonical form choice (PROTOCOL.md §3)."""
    if math.isfinite(v) and v == math.floor(v):
        if 0 <= v < 2**64:
            return 0, uvarint(int(v))
        if -(2**63) <= v < 0:
            return 1, svarint(int(v))
    return 2, struct.pack("<d", v)


class Batch:
    def __init__(self, drops: int = 0):
        self.out = bytearray([MAGIC])
        if drops:
            self.out += b"\x02" + uvarint(drops)
        self.series: dict[tuple, int] = {}

    def call(self, kind: str, name: str, v: float, labels: list[tuple[str, str]]):
        key = (name, tuple(labels))
        if key not in self.series:
            self.series[key] = len(self.series)
            rec = b"\x01" + string(name) + uvarint(len(labels))
            for ln, lv in labels:
                rec += string(ln) + string(lv)
            self.out += rec
        if kind in KEY_KINDS:
            form, enc = 3, string(v)  # v is the item key
        else:
            form, enc = value(v)
        self.out += bytes([KINDS[kind] << 4 | form]) + uvarint(self.series[key]) + enc


def tok(s: str) -> str:
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if 0x21 <= b <= 0x7E and c not in "%=":
            out.append(c)
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def fmt_value(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0 and math.copysign(1.0, v) < 0:
        return "-0"
    if v == math.floor(v) and abs(v) < 2**64:
        return str(int(v))
    return repr(v)


VALID = [
    ("counter_one_no_labels", 0, [("counter_add", "p2p.image.downloads.total", 1, [])]),
    ("counter_labels_and_histogram", 0, [
        ("counter_add", "p2p.cache.hits", 1, [("cache_type", "chunk")]),
        ("histogram_observe", "p2p.transfer.duration", 0.25, []),
    ]),
    ("gauge_add_negative_with_drops", 3, [("gauge_add", "p2p.transfers.active", -1, [])]),
    ("seed_import_success", 0, [
        ("counter_add", "p2p.image.imports.total", 1, [("artifact_type", "microvm")]),
        ("counter_add", "p2p.bytes_transferred.total", 1073741824, [("artifact_type", "microvm")]),
    ]),
    ("seed_import_failure", 0, [
        ("counter_add", "p2p.image.imports.total", 1, [("artifact_type", "container")]),
        ("counter_add", "p2p.image.imports.failed", 1, [("artifact_type", "container")]),
    ]),
    ("series_reused_in_batch", 0, [
        ("counter_add", "p2p.chunks_transferred.total", 1, []),
        ("counter_add", "p2p.bytes_transferred.total", 65536, []),
        ("counter_add", "p2p.chunks_transferred.total", 1, []),
        ("counter_add", "p2p.bytes_transferred.total", 4096, []),
        ("counter_add", "p2p.chunks_deduplicated.total", 1, []),
    ]),
    ("label_order_is_part_of_the_series_record", 0, [
        ("counter_add", "jobs", 1, [("a", "1"), ("b", "2")]),
        ("counter_add", "jobs", 2, [("b", "2"), ("a", "1")]),
    ]),
    ("float_values", 0, [
        ("counter_add", "work.seconds", 0.5, []),
        ("gauge_set", "temperature", -12.75, [("sensor", "cpu")]),
        ("gauge_add", "temperature", 0.125, [("sensor", "cpu")]),
        ("histogram_observe", "p2p.transfer.duration", 1e-3, []),
    ]),
    ("gauge_set_special_values", 0, [
        ("gauge_set", "g", float("inf"), []),
        ("gauge_set", "g", float("-inf"), []),
        ("gauge_set", "g", float("nan"), []),
        ("gauge_set", "g", -0.0, []),
    ]),
    ("integer_extremes", 0, [
        ("counter_add", "big", 18446744073709549568, []),  # 2^64 - 2048, the largest double < 2^64
        ("gauge_add", "g", -9223372036854775808, []),
        ("gauge_set", "g", 127, []),
        ("gauge_set", "g", 128, []),
        ("gauge_set", "g", 16384, []),
        ("gauge_set", "g", 18446744073709551616.0, []),  # 2^64: not representable as uvarint, f64
    ]),
    ("utf8_and_escapes_in_label_values", 0, [
        ("counter_add", "p2p.verification.failed", 1,
         [("verification_type", 'nar "hash"\\\n'), ("node", "nœud-é=日本 x")]),
    ]),
    ("empty_label_value", 0, [("gauge_set", "p2p.transfers.active", 0, [("node", "")])]),
    ("many_labels", 0, [("counter_add", "wide", 7, [("l%d" % i, "v%d" % i) for i in range(16)])]),
    ("drops_large", 300, [("counter_add", "c", 2, [])]),
    ("seed_download_failure", 0, [
        ("counter_add", "p2p.image.downloads.total", 1, []),
        ("counter_add", "p2p.image.downloads.failed", 1, []),
        ("histogram_observe", "p2p.transfer.duration", 12.5, []),
    ]),
    ("distinct_and_topk_keys", 0, [
        ("distinct_add", "p2p.chunks.unique", "sha256:4f2a", []),
        ("distinct_add", "p2p.chunks.unique", "sha256:9b1c", []),
        ("topk_add", "p2p.chunks.requested", "sha256:4f2a", [("node", "n1")]),
        ("topk_add", "p2p.chunks.requested", "chunk é 1", [("node", "n1")]),
    ]),
    ("seed_chunk_transfer_with_hash", 0, [
        ("counter_add", "p2p.chunks_transferred.total", 1, []),
        ("counter_add", "p2p.bytes_transferred.total", 4096, []),
        ("distinct_add", "p2p.chunks.unique", "sha256:4f2a", []),
    ]),
    ("seed_chunk_request", 0, [("topk_add", "p2p.chunks.requested", "sha256:4f2a", [])]),
    ("seed_transfer_guard", 0, [
        ("gauge_add", "p2p.transfers.active", 1, []),
        ("gauge_add", "p2p.transfers.active", -1, []),
        ("histogram_observe", "p2p.transfer.duration", 3.75, []),
    ]),
]


def s(x: str) -> bytes:
    return string(x)


SERIES_C = b"\x01" + s("c") + b"\x00"
# (id, bytes, reason)
REJECT = [
    ("empty", bytes([MAGIC]), "empty"),
    ("bad_magic", bytes([0xF6]) + SERIES_C + b"\x10\x00\x01", "bad_magic"),
    ("truncated_name", bytes([MAGIC, 0x01, 0x05]) + b"ab", "truncated"),
    ("truncated_value", bytes([MAGIC]) + SERIES_C + b"\x12\x00\x00\x00\x00", "truncated"),
    ("truncated_varint", bytes([MAGIC]) + SERIES_C + b"\x10\x00\x80", "truncated"),
    ("varint_too_long", bytes([MAGIC]) + SERIES_C + b"\x10\x00" + b"\xff" * 10 + b"\x01", "bad_varint"),
    ("varint_overflow", bytes([MAGIC]) + SERIES_C + b"\x10\x00" + b"\xff" * 9 + b"\x02", "bad_varint"),
    ("varint_not_minimal", bytes([MAGIC]) + SERIES_C + b"\x10\x00\x81\x00", "bad_varint"),
    ("absurd_name_length", bytes([MAGIC, 0x01]) + uvarint(2**63) + b"x", "truncated"),
    ("bad_utf8_value", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("l") + b"\x02\xc3\x28" + b"\x10\x00\x01", "bad_utf8"),
    ("overlong_utf8", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("l") + b"\x02\xc0\xaf" + b"\x10\x00\x01", "bad_utf8"),
    ("surrogate_utf8", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("l") + b"\x03\xed\xa0\x80" + b"\x10\x00\x01", "bad_utf8"),
    ("unknown_record", bytes([MAGIC]) + SERIES_C + b"\x07\x00\x01", "unknown_record"),
    ("unknown_form", bytes([MAGIC]) + SERIES_C + b"\x13\x00\x01", "unknown_record"),
    ("reserved_kind", bytes([MAGIC]) + SERIES_C + b"\x70\x00\x01", "unknown_record"),
    ("distinct_with_numeric_form", bytes([MAGIC]) + SERIES_C + b"\x50\x00\x01", "unknown_record"),
    ("counter_with_key_form", bytes([MAGIC]) + SERIES_C + b"\x13\x00\x01x", "unknown_record"),
    ("distinct_key_too_long", bytes([MAGIC]) + SERIES_C + b"\x53\x00" + s("k" * 1025), "too_long"),
    ("topk_key_too_long", bytes([MAGIC]) + SERIES_C + b"\x63\x00" + s("k" * 129), "too_long"),
    ("topk_empty_key", bytes([MAGIC]) + SERIES_C + b"\x63\x00\x00", "too_long"),
    ("topk_key_not_utf8", bytes([MAGIC]) + SERIES_C + b"\x63\x00\x02\xc3\x28", "bad_utf8"),
    ("topk_with_key_label", bytes([MAGIC, 0x01]) + s("t") + b"\x01" + s("key") + s("x") + b"\x63\x00" + s("a"), "reserved_label"),
    ("forward_series_ref", bytes([MAGIC]) + b"\x10\x00\x01" + SERIES_C, "bad_series_ref"),
    ("series_ref_out_of_range", bytes([MAGIC]) + SERIES_C + b"\x10\x01\x01", "bad_series_ref"),
    ("metric_name_starts_with_digit", bytes([MAGIC, 0x01]) + s("1abc") + b"\x00\x10\x00\x01", "bad_metric_name"),
    ("metric_name_with_dash", bytes([MAGIC, 0x01]) + s("p2p-x") + b"\x00\x10\x00\x01", "bad_metric_name"),
    ("empty_metric_name", bytes([MAGIC, 0x01]) + s("") + b"\x00\x10\x00\x01", "bad_metric_name"),
    ("reserved_metric_name", bytes([MAGIC, 0x01]) + s("p2pmetricsd.series") + b"\x00\x10\x00\x01", "reserved_name"),
    ("bad_label_name", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("cache-type") + s("x") + b"\x10\x00\x01", "bad_label_name"),
    ("double_underscore_label", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("__name__") + s("x") + b"\x10\x00\x01", "bad_label_name"),
    ("duplicate_label", bytes([MAGIC, 0x01]) + s("c") + b"\x02" + s("a") + s("1") + s("a") + s("2") + b"\x10\x00\x01", "duplicate_label"),
    ("le_label_on_histogram", bytes([MAGIC, 0x01]) + s("h") + b"\x01" + s("le") + s("1") + b"\x42\x00" + struct.pack("<d", 1.0), "reserved_label"),
    ("name_too_long", bytes([MAGIC, 0x01]) + s("n" * 201) + b"\x00\x10\x00\x01", "too_long"),
    ("label_value_too_long", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("l") + s("v" * 1025) + b"\x10\x00\x01", "too_long"),
    ("too_many_labels", bytes([MAGIC, 0x01]) + s("c") + b"\x11" + b"".join(s("l%d" % i) + s("v") for i in range(17)) + b"\x10\x00\x01", "too_many_labels"),
    ("negative_counter_svarint", bytes([MAGIC]) + SERIES_C + b"\x11\x00\x01", "negative_counter"),
    ("negative_counter_float", bytes([MAGIC]) + SERIES_C + b"\x12\x00" + struct.pack("<d", -0.5), "negative_counter"),
    ("counter_nan", bytes([MAGIC]) + SERIES_C + b"\x12\x00" + struct.pack("<d", float("nan")), "non_finite"),
    ("counter_inf", bytes([MAGIC]) + SERIES_C + b"\x12\x00" + struct.pack("<d", float("inf")), "non_finite"),
    ("gauge_add_nan", bytes([MAGIC]) + SERIES_C + b"\x32\x00" + struct.pack("<d", float("nan")), "non_finite"),
    ("histogram_neg_inf", bytes([MAGIC]) + SERIES_C + b"\x42\x00" + struct.pack("<d", float("-inf")), "non_finite"),
    ("good_then_bad_applies_nothing", bytes([MAGIC]) + SERIES_C + b"\x10\x00\x05" + b"\x10\x00\x80", "truncated"),
    # Limits (PROTOCOL.md §1.5).
    ("oversized", (bytes([MAGIC]) + SERIES_C + b"\x10\x00\x01" * 21845)[:65536] + b"\x01", "oversized"),
    ("too_many_series", bytes([MAGIC]) + SERIES_C * 4097 + b"\x10\x00\x01", "too_many_series"),
    ("label_name_too_long", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("l" * 101) + s("v") + b"\x10\x00\x01", "too_long"),
    # Empty label values are no label, but the record's rules hold as sent (§1.4).
    ("empty_le_on_histogram", bytes([MAGIC, 0x01]) + s("h") + b"\x01" + s("le") + s("") + b"\x40\x00\x01", "reserved_label"),
    ("empty_value_duplicate_label", bytes([MAGIC, 0x01]) + s("c") + b"\x02" + s("a") + s("") + s("a") + s("x") + b"\x10\x00\x01", "duplicate_label"),
    # The order of checks when a datagram breaks several rules (§2.1).
    ("order_structure_before_characters", bytes([MAGIC, 0x01]) + s("bad-name") + b"\x11" + b"".join(s("l%d" % i) + s("v") for i in range(17)) + b"\x10\x00\x01", "too_many_labels"),
    ("order_length_before_characters", bytes([MAGIC, 0x01]) + s("-" * 201) + b"\x00\x10\x00\x01", "too_long"),
    ("order_truncated_before_too_long", bytes([MAGIC, 0x01]) + uvarint(300) + b"n" * 10, "truncated"),
    ("order_label_structure_before_metric_name", bytes([MAGIC, 0x01]) + s("bad-name") + b"\x01" + s("l") + s("v" * 1025) + b"\x10\x00\x01", "too_long"),
    ("order_metric_name_before_labels", bytes([MAGIC, 0x01]) + s("bad-name") + b"\x01" + s("bad-label") + b"\x02\xc3\x28" + b"\x10\x00\x01", "bad_metric_name"),
    ("order_bad_chars_before_reserved", bytes([MAGIC, 0x01]) + s("p2pmetricsd_x-y") + b"\x00\x10\x00\x01", "bad_metric_name"),
    ("order_label_name_before_value", bytes([MAGIC, 0x01]) + s("c") + b"\x01" + s("bad-label") + b"\x02\xc3\x28" + b"\x10\x00\x01", "bad_label_name"),
    ("order_value_before_duplicate", bytes([MAGIC, 0x01]) + s("c") + b"\x02" + s("a") + s("1") + s("a") + b"\x02\xc3\x28" + b"\x10\x00\x01", "bad_utf8"),
    ("order_first_record_wins", bytes([MAGIC]) + SERIES_C + b"\x10\x01\x01" + b"\x07", "bad_series_ref"),
    ("order_form_before_series_ref", bytes([MAGIC]) + b"\x13\x05\x01", "unknown_record"),
    ("order_series_ref_before_value", bytes([MAGIC]) + b"\x11\x00\x01", "bad_series_ref"),
    ("order_reserved_label_before_value", bytes([MAGIC, 0x01]) + s("h") + b"\x01" + s("le") + s("1") + b"\x42\x00" + struct.pack("<d", float("nan")), "reserved_label"),
    ("order_series_count_before_series_bytes", bytes([MAGIC]) + SERIES_C * 4096 + b"\x01\x05", "too_many_series"),
    ("order_topk_length_before_utf8", bytes([MAGIC]) + SERIES_C + b"\x63\x00" + uvarint(129) + b"\xc3\x28" * 64 + b"\xc3", "too_long"),
    ("order_negative_before_later_truncation", bytes([MAGIC]) + SERIES_C + b"\x11\x00\x01" + b"\x10\x00\x80", "negative_counter"),
    ("order_magic_before_empty", bytes([0xF6]), "bad_magic"),
] + [
    # Every first byte from 0x80 to 0xF4 (UTF-8 continuation and lead bytes: never text, never v1).
    ("bad_first_byte_%02x" % b, bytes([b]) + SERIES_C + b"\x10\x00\x01", "bad_magic") for b in range(0x80, 0xF5)
]

# Valid datagrams a canonical encoder never emits, which every decoder must accept:
# (id, bytes, drops, calls) — decoded samples must equal the calls, and the drop records' sum `drops`.
ACCEPT = [
    ("drop_only", bytes([MAGIC, 0x02, 0x05]), 5, []),
    ("drop_record_not_first", bytes([MAGIC]) + SERIES_C + b"\x10\x00\x01" + b"\x02\x07", 7,
     [("counter_add", "c", 1, [])]),
    ("drop_records_add_up", bytes([MAGIC, 0x02, 0x03]) + SERIES_C + b"\x02\x00" + b"\x10\x00\x02" + b"\x02\x04", 7,
     [("counter_add", "c", 2, [])]),
    ("unreferenced_series_record", bytes([MAGIC]) + SERIES_C + b"\x01" + s("unused") + b"\x00" + b"\x10\x00\x01", 0,
     [("counter_add", "c", 1, [])]),
    ("series_repeated_in_one_datagram", bytes([MAGIC]) + SERIES_C + SERIES_C + b"\x10\x00\x01\x10\x01\x02", 0,
     [("counter_add", "c", 1, []), ("counter_add", "c", 2, [])]),
    ("non_minimal_value_form", bytes([MAGIC]) + SERIES_C + b"\x12\x00" + struct.pack("<d", 3.0) + b"\x11\x00\x04", 0,
     [("counter_add", "c", 3.0, []), ("counter_add", "c", 2, [])]),
]


def main() -> None:
    lines = [
        "# p2pmetricsd wire protocol v1 test vectors. Generated by gen_vectors.py; do not edit.",
        "# Format: ../PROTOCOL.md section 7.",
        "",
    ]
    for vid, drops, calls in VALID:
        b = Batch(drops)
        lines.append("vector " + vid)
        if drops:
            lines.append("drops %d" % drops)
        for kind, name, v, labels in calls:
            if kind in KEY_KINDS:
                b.call(kind, name, v, labels)
                assert v, "an empty key has no token in the vector format"
                parts = ["call", kind, tok(name), tok(v)]
            else:
                v = float(v) if not isinstance(v, int) or abs(v) >= 2**53 else v
                b.call(kind, name, float(v), labels)
                parts = ["call", kind, tok(name), fmt_value(float(v))]
            parts += [tok(k) + "=" + tok(val) for k, val in labels]
            lines.append(" ".join(parts))
        lines.append("bytes " + bytes(b.out).hex())
        lines.append("end")
        lines.append("")
    for aid, data, drops, calls in ACCEPT:
        lines.append("accept " + aid)
        if drops:
            lines.append("drops %d" % drops)
        for kind, name, v, labels in calls:
            parts = ["call", kind, tok(name), fmt_value(float(v))] + [tok(k) + "=" + tok(val) for k, val in labels]
            lines.append(" ".join(parts))
        lines.append("bytes " + data.hex())
        lines.append("end")
        lines.append("")
    for rid, data, reason in REJECT:
        lines.append("reject " + rid)
        lines.append("bytes " + data.hex())
        lines.append("reason " + reason)
        lines.append("end")
        lines.append("")
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("vectors.txt")
    out.write_text("\n".join(lines))
    print("wrote %s (%d valid, %d accept, %d reject)" % (out, len(VALID), len(ACCEPT), len(REJECT)), file=sys.stderr)


if __name__ == "__main__":
    main()
