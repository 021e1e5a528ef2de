#!/usr/bin/env bash
# Refresh constraints.txt: resolve the newest versions of every dependency (torch stays on the
# pinned CPU build), run the whole test suite and the style gates against them in a fresh
# virtual environment, and only if everything passes write the resolved versions back.
#
#   bash scripts/refresh_constraints.sh            # then review `git diff constraints.txt`
#
# Needs network access to the package index; takes a few minutes (the suite runs once).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_pin="$(grep -E '^torch==' constraints.txt)"
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
echo "$torch_pin" >"$venv/torch-only.txt"
"$venv/bin/python" -m pip install -q -c "$venv/torch-only.txt" -e ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/python" -m pytest -q
{
    sed -n '/^#/p' constraints.txt
    echo "$torch_pin"
    "$venv/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(torch|pip|setuptools|wheel)=='
} >constraints.txt.new
mv constraints.txt.new constraints.txt
rm -rf "$(dirname "$venv")"
echo "constraints.txt refreshed; review with: git diff constraints.txt"
