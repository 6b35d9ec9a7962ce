#!/usr/bin/env bash
# Refresh the dependency locks the packages are built from (packaging/build-venv.sh installs them with
# `pip --require-hashes`, so a package holds exactly these versions and files, whatever PyPI serves later):
#   packaging/requirements.lock        pyproject.toml's runtime dependencies and the `skip` extra (sslpsk3,
#                                      SKIP's TLS-PSK: the packages serve SKIP), resolved, every file's sha256
#   packaging/plot-requirements.lock   the same plus the `plot` extra (matplotlib, for qkdctl's PNG plots),
#                                      which the packages leave out (lintian: it embeds image and font libraries)
#   packaging/test-requirements.lock   the runtime dependencies and the `test` extra, the same way
#   packaging/build-requirements.lock  its [build-system] requires (setuptools, wheel, cffi), the same way
#   packaging/sdist-build-requirements.lock  what the runtime lock's sdist-only distributions need to build
#                                      beyond that (packaging/sdist-build-requirements.in: poetry-core for
#                                      sslpsk3), pinned against the build lock
# Run from anywhere, with network access to the index; review the diff and commit both files together.
# pip's own configuration (extra indexes, find-links) is ignored, so that only the public index's files
# are hashed.
#
# usage: lock-requirements.sh        env: PYTHON (default /usr/bin/python3): the interpreter the
#                                         packages are built with (the resolution is for its version)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-/usr/bin/python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT

export PIP_CONFIG_FILE=/dev/null
# The lock files' header names this script as the command that made them.
export CUSTOM_COMPILE_COMMAND="packaging/lock-requirements.sh"
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
"$python" -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check 'pip-tools>=7.4'

compile=("$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras
         --no-emit-index-url --no-emit-find-links)
cd "$repo"
# setuptools prints deprecation notices about the dependencies' metadata while resolving: kept in a log
# that is shown only if pip-compile fails.
log="$tools/pip-compile.log"
"${compile[@]}" --upgrade --extra skip --output-file packaging/requirements.lock pyproject.toml 2>"$log" \
    || { cat "$log" >&2; exit 1; }
# The plot lock keeps the runtime lock's pins (constraint) and adds the plot extra's distributions.
"${compile[@]}" --upgrade --extra skip --extra plot --constraint packaging/requirements.lock \
    --output-file packaging/plot-requirements.lock pyproject.toml 2>"$log" || { cat "$log" >&2; exit 1; }
# The test extra (pytest, the Infisical SDK the KMS tests run, ...) with the runtime dependencies: what
# `pip install --require-hashes -r packaging/test-requirements.lock` gives a CI machine.
"${compile[@]}" --upgrade --extra skip --extra test --constraint packaging/requirements.lock \
    --output-file packaging/test-requirements.lock pyproject.toml 2>"$log" \
    || { cat "$log" >&2; exit 1; }
"${compile[@]}" --upgrade --all-build-deps --only-build-deps --output-file packaging/build-requirements.lock \
    pyproject.toml 2>"$log" || { cat "$log" >&2; exit 1; }
# The sdists' build back-ends, kept apart from the build lock (pip-compile resolves a project's build
# requirements only from the project's own pyproject.toml), consistent with it through the constraint.
"${compile[@]}" --upgrade --constraint packaging/build-requirements.lock \
    --output-file packaging/sdist-build-requirements.lock packaging/sdist-build-requirements.in 2>"$log" \
    || { cat "$log" >&2; exit 1; }
rm -rf qkdd.egg-info
echo "locked: $(grep -c '^[a-z]' packaging/requirements.lock) runtime and" \
     "$(grep -c '^[a-z]' packaging/build-requirements.lock) build distributions"
