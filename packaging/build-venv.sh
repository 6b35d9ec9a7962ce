#!/usr/bin/env bash
# Build qkdd's private virtual environment for a distribution package (used by debian/rules and
# rpm/qkdd.spec): create it in a staging tree, install the project (compiling native/) and its
# dependencies, then make it valid at its final path. A venv records absolute paths when it is
# created, so shebangs and pyvenv.cfg are rewritten from the staging path to the final one, and the
# result is checked: no file may still name the staging tree.
#
# usage: build-venv.sh SOURCE_DIR STAGING_ROOT PREFIX     e.g. . debian/qkdd /usr/lib/qkdd
# env:   PYTHON (default /usr/bin/python3): the distribution's interpreter the venv is built on.
set -euo pipefail

[[ $# -eq 3 ]] || { echo "usage: $0 SOURCE_DIR STAGING_ROOT PREFIX" >&2; exit 2; }
src=$1 staging_root=$2 prefix=$3
python=${PYTHON:-/usr/bin/python3}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# Bind the venv to the versioned interpreter (python3.X), the one the package depends on, so a
# later change of the distribution's default python3 cannot silently swap it.
interpreter=/usr/bin/python$version
venv="$staging_root$prefix"

rm -rf "$venv"
"$interpreter" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile "$src"
# The service venv is never changed in place (upgrades replace it), so the installers go.
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
find "$venv" -depth -name __pycache__ -type d -exec rm -rf {} +

# Shebangs of the console scripts: staging path -> final path.
for script in "$venv"/bin/*; do
    [[ -f $script && ! -L $script ]] || continue
    sed -i "1s|^#!$venv/bin/|#!$prefix/bin/|" "$script"
done
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"
# pip's record of where the project came from (the build tree) means nothing on the target.
find "$venv" -path '*.dist-info/direct_url.json' -delete
find "$venv" -path '*.dist-info/RECORD' -exec sed -i '/direct_url\.json/d' {} +

if leftovers=$(grep -rlF -- "$venv" "$venv"); then
    echo "build-venv: files still name the staging tree $venv:" >&2
    echo "$leftovers" >&2
    exit 1
fi
echo "python$version"
