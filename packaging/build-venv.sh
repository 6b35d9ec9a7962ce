#!/usr/bin/env bash
# Build qkdd's private virtual environment for a distribution package (used by debian/rules and
# rpm/qkdd.spec) from the locked dependencies, then make it valid at its final path.
#
# 1. Every third-party file comes from packaging/requirements.lock (runtime) and
#    packaging/build-requirements.lock (setuptools, wheel, cffi to build qkdd itself), installed with
#    `pip --require-hashes --no-deps`: pip refuses any file whose sha256 the lock does not list, and
#    resolves nothing, so the same lock always yields the same distributions. Nothing is fetched
#    unpinned: qkdd and the sdist-only dependencies are built without build isolation in a throwaway
#    venv that holds only the build locks (packaging/sdist-build-requirements.lock adds the sdists'
#    build back-ends, poetry-core for sslpsk3). C extensions built from sdists are compiled without
#    debug information (-g0): pip unpacks an sdist in a randomly named directory, and DWARF would record
#    it, so two builds would differ. Refresh the locks with packaging/lock-requirements.sh.
# 2. The test suites that wheels bundle (numpy/*/tests, trio/_tests, ...) are removed, with their RECORD
#    entries; the installed distributions are checked against the lock, name for name and version for
#    version.
# 3. A venv records absolute paths when it is created, so shebangs and pyvenv.cfg are rewritten from
#    the staging path to the final one, and the result is checked: no file may still name the staging tree.
#
# usage: build-venv.sh SOURCE_DIR STAGING_ROOT PREFIX     e.g. . debian/qkdd /usr/lib/qkdd
# env:   PYTHON (default /usr/bin/python3): the distribution's interpreter the venv is built on.
set -euo pipefail

[[ $# -eq 3 ]] || { echo "usage: $0 SOURCE_DIR STAGING_ROOT PREFIX" >&2; exit 2; }
src=$(cd "$1" && pwd) staging_root=$2 prefix=$3
python=${PYTHON:-/usr/bin/python3}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# Bind the venv to the versioned interpreter (python3.X), the one the package depends on, so a
# later change of the distribution's default python3 cannot silently swap it.
interpreter=/usr/bin/python$version
venv="$staging_root$prefix"
runtime_lock="$src/packaging/requirements.lock"
build_lock="$src/packaging/build-requirements.lock"
sdist_build_lock="$src/packaging/sdist-build-requirements.lock"
# Names of the directories that hold a distribution's own test suite.
TEST_DIRS=(tests test _tests)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip=("$work/build/bin/python" -m pip --disable-pip-version-check)
locked=(--require-hashes --no-deps --no-build-isolation)

# The build environment: the interpreter's bundled pip, then only what the build lock names.
"$interpreter" -m venv "$work/build"
"${pip[@]}" install --quiet --no-compile "${locked[@]}" -r "$build_lock" -r "$sdist_build_lock"
# Wheels of every locked runtime dependency (downloaded, or built here from an sdist after its hash was
# checked) and of qkdd (compiling native/). A local directory has no hash to check: it is the source.
CFLAGS="${CFLAGS:-} -g0" "${pip[@]}" wheel --quiet "${locked[@]}" --wheel-dir "$work/wheels" -r "$runtime_lock"
"${pip[@]}" wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/wheels" "$src"

# The service venv: no pip or setuptools in it (it is never changed in place; upgrades replace it).
rm -rf "$venv"
"$interpreter" -m venv --without-pip "$venv"
"${pip[@]}" --python "$venv/bin/python" install --quiet --no-compile --no-index --no-deps "$work"/wheels/*.whl
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
site=$(echo "$venv"/lib/python"$version"/site-packages)

# Bundled test suites go (their RECORD lines are dropped below).
files_before=$(find "$site" -type f | wc -l)
test_dir_args=()
for name in "${TEST_DIRS[@]}"; do test_dir_args+=(-o -name "$name"); done
find "$site" -mindepth 2 -type d \( "${test_dir_args[@]:1}" \) -prune -exec rm -rf {} +
find "$site" -depth -name __pycache__ -type d -exec rm -rf {} +
files_after=$(find "$site" -type f | wc -l)
echo "build-venv: removed bundled test suites: $files_before -> $files_after files in site-packages" >&2

# pip's record of where the project came from (the build tree) means nothing on the target.
find "$venv" -path '*.dist-info/direct_url.json' -delete

# What was installed is exactly the lock, plus qkdd itself.
"$venv/bin/python" - "$site" "$runtime_lock" <<'EOF'
import pathlib, re, sys
from importlib.metadata import distributions
site, lock = sys.argv[1], pathlib.Path(sys.argv[2]).read_text()
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()
wanted = {(canonical(n), v) for n, v in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock, re.M)}
installed = {(canonical(d.metadata["Name"]), d.version) for d in distributions(path=[site])}
installed = {item for item in installed if item[0] != "qkdd"}
if installed != wanted:
    sys.exit(f"build-venv: installed distributions differ from the lock: extra {sorted(installed - wanted)}, "
             f"missing {sorted(wanted - installed)}")
EOF

# Shebangs of the console scripts: staging path -> final path.
for script in "$venv"/bin/*; do
    [[ -f $script && ! -L $script ]] || continue
    sed -i "1s|^#!$venv/bin/|#!$prefix/bin/|" "$script"
done
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"

# Each RECORD (pip's list of a distribution's files) as the files now are: without the removed ones, and
# with the hashes of the rewritten scripts, so the tree does not depend on where it was built.
"$venv/bin/python" - "$site" <<'EOF'
import base64, csv, hashlib, io, pathlib, sys
site = pathlib.Path(sys.argv[1])
for record in site.glob("*.dist-info/RECORD"):
    rows = []
    for row in csv.reader(io.StringIO(record.read_text())):
        if not row or not (site / row[0]).exists():
            continue
        if row[1]:
            data = (site / row[0]).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            row = [row[0], f"sha256={digest}", str(len(data))]
        rows.append(row)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue())
EOF

if leftovers=$(grep -rlF -- "$venv" "$venv"); then
    echo "build-venv: files still name the staging tree $venv:" >&2
    echo "$leftovers" >&2
    exit 1
fi
if leftovers=$(find "$site" -mindepth 2 -type d \( "${test_dir_args[@]:1}" \) | head -5) && [[ -n $leftovers ]]; then
    echo "build-venv: test suites left: $leftovers" >&2
    exit 1
fi
echo "python$version"
