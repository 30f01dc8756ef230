#!/usr/bin/env bash
# Regenerate constraints.txt: resolve the test extra in a fresh venv (today's
# releases within pyproject's floors) and pin what it installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e ".[test]"
{
  echo "# Pins for CI and the test command (pip install ... -c constraints.txt): the"
  echo "# environment the suite last passed in. Regenerate with scripts/pin-constraints.sh"
  echo "# after raising a floor in pyproject.toml."
  "$venv/bin/pip" freeze --exclude-editable | grep -v '^storecomp' | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
} > constraints.txt
rm -rf "$(dirname "$venv")"
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
