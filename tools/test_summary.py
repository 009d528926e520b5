#!/usr/bin/env python3
"""Sums the JUnit XML that `bazel test` leaves in bazel-testlogs into one closing line.

    python3 tools/test_summary.py [bazel-testlogs]   ->  "Tests: 123 passed, 0 failed, 4 skipped"

Counts test cases (not Bazel targets), from the targets' latest runs: a target's run_<i>_of_<n>/
reports (left by --runs_per_test) count only when it has no report of its own, so an earlier repeated
run is not added to a later plain one. Exits 1 if any failed or errored, or if no test case ran at all.
"""
import pathlib
import re
import sys
import xml.etree.ElementTree as ET


def count(testlogs):
    passed = failed = skipped = 0
    for xml in sorted(pathlib.Path(testlogs).rglob("test.xml")):
        repeat = re.fullmatch(r"run_\d+_of_\d+", xml.parent.name)
        if repeat and (xml.parent.parent / "test.xml").is_file():
            continue
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError:
            failed += 1  # a crashed test leaves no valid report: count it as a failure
            continue
        for case in root.iter("testcase"):
            if case.find("skipped") is not None:
                skipped += 1
            elif case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            else:
                passed += 1
    return passed, failed, skipped


def main():
    testlogs = sys.argv[1] if len(sys.argv) > 1 else "bazel-testlogs"
    passed, failed, skipped = count(testlogs)
    print(f"Tests: {passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed or passed == 0 else 0)


if __name__ == "__main__":
    main()
