"""libFuzzer target (atheris): arbitrary octets through the parser and the session.

Run from the repository root, with libFuzzer's options after the corpus, on
a copy of tests/fuzz/corpus (libFuzzer adds what it finds to it)::

    cp -r tests/fuzz/corpus /tmp/corpus
    .venv/bin/python -m tests.fuzz.fuzz_session /tmp/corpus -max_len=4096

mailfast's Python modules are instrumented for coverage; the compiled parser
is not, so what guides the fuzzer through the parser's own logic is its
pure-Python twin, which a quarter of the inputs also run through and which
must agree with it. A broken rule of tests.fuzz.harness raises
InvariantError, any other exception escaped from the server: either way
libFuzzer stops and saves the input (its first octet is the options octet of
``check_fuzz_input``).
"""

import sys

import atheris

with atheris.instrument_imports(include=["mailfast"]):
    from tests.fuzz.harness import check_fuzz_input


def test_one_input(fuzz_input: bytes) -> None:
    check_fuzz_input(fuzz_input)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
