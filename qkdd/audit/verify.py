"""Checking an audit log (trail.py): the hash chain, the sequence, and every HEAD's ML-DSA-65 signature
against the node's public key. Returns the problems found, each naming the line; none means intact."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from qkdd.audit.trail import EVENTS, GENESIS, head_message, record_hash


@dataclass
class Report:
    records: int = 0
    signed_heads: int = 0
    unsigned_tail: int = 0                 # records after the last signed HEAD
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify_lines(lines: list[bytes], public_key: mldsa.MLDSA65PublicKey | None) -> Report:
    report = Report()
    prev, expected_seq = GENESIS, 0
    hashes: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        report.records += 1
        try:
            record = json.loads(line)
            seq, stated_prev, stated_hash, event = record["seq"], record["prev"], record["hash"], record["event"]
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"line {number}: not an audit record")
            prev, expected_seq = None, None
            continue
        if event not in EVENTS:
            report.problems.append(f"line {number}: unknown event {event!r}")
        if expected_seq is not None and seq != expected_seq:
            kind = ("missing before it (deleted or moved)" if isinstance(seq, int) and seq > expected_seq
                    else "out of order (reordered or duplicated)")
            report.problems.append(f"line {number}: seq {seq}, expected {expected_seq}: records {kind}")
        if prev is not None and stated_prev != prev:
            report.problems.append(f"line {number} (seq {seq}): does not chain to the record before it")
        try:
            computed = record_hash(record)
        except (ValueError, TypeError):
            computed = None
        if computed != stated_hash:
            report.problems.append(f"line {number} (seq {seq}): hash does not match its content: record edited")
        hashes[seq] = stated_hash
        prev, expected_seq = stated_hash, seq + 1 if isinstance(seq, int) else None
        report.unsigned_tail += 1
        if event == "head":
            _check_head(record, number, hashes, public_key, report)
    return report


def _check_head(record: dict, number: int, hashes: dict[int, str], public_key, report: Report) -> None:
    head_seq, head = record.get("head_seq"), record.get("head")
    if hashes.get(head_seq) != head:
        report.problems.append(f"line {number}: HEAD names seq {head_seq}, which the log does not hold as signed")
        return
    signature = record.get("signature")
    if public_key is None:
        return
    if signature is None:
        report.problems.append(f"line {number}: HEAD is not signed (the node had no identity key)")
        return
    try:
        public_key.verify(bytes.fromhex(signature), head_message(head, head_seq))
    except (InvalidSignature, ValueError):
        report.problems.append(f"line {number}: HEAD signature does not verify: the log before it was rewritten "
                               "or the key is not this node's")
        return
    report.signed_heads += 1
    report.unsigned_tail = 0


def verify_file(path: str, public_key: mldsa.MLDSA65PublicKey | None) -> Report:
    with open(path, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line]
    return verify_lines(lines, public_key)
