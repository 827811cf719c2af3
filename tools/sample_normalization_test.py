#!/usr/bin/env python3
"""Writes tests/data/unicode/NormalizationTest-sample.txt: the conformance lines of the Unicode Character Database's
NormalizationTest.txt (Debian package unicode-data) that tests/test_tokenizer.cpp checks normalize_unicode against:
all of Parts 0, 2 and 3 and every 20th line of Part 1, comments dropped.

Usage: tools/sample_normalization_test.py [NormalizationTest.txt(.bz2), default /usr/share/unicode/NormalizationTest.txt.bz2]
"""
import bz2
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/unicode/NormalizationTest.txt.bz2"
opener = bz2.open if path.endswith(".bz2") else open
with opener(path, "rt", encoding="utf-8") as f:
    lines = f.read().splitlines()
version = lines[0].lstrip("# ").strip()
out = [f"# Sample of {version} (tools/sample_normalization_test.py): source;NFC;NFD;NFKC;NFKD",
       "# All of Parts 0, 2, 3 and every 20th line of Part 1, comments dropped. Data (c) Unicode, Inc., Unicode License."]
part = ""
n_part1 = 0
for line in lines:
    if line.startswith("@"):
        part = line.split()[0]
        out.append(part)
        continue
    if not line or line.startswith("#"):
        continue
    if part == "@Part1":
        n_part1 += 1
        if n_part1 % 20 != 1:
            continue
    out.append(";".join(line.split(";")[:5]))
sys.stdout.write("\n".join(out) + "\n")
