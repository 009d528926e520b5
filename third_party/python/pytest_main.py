"""Entry point of py_pytest targets: pytest over the files given as arguments.

The repository root must precede site-packages: pytest installs a top-level `py.py` shim that
would otherwise shadow the project's `py` package.
"""
import os
import sys


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:] = [root] + [p for p in sys.path if os.path.abspath(p or ".") != root]
    sys.modules.pop("py", None)
    import pytest  # after the path fix-up, so `py` resolves to the project

    args = ["-p", "no:cacheprovider", "-q", "-rs", "--rootdir", root] + sys.argv[1:]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append("--junitxml=" + xml)
    sys.exit(pytest.main(args))


if __name__ == "__main__":
    main()
